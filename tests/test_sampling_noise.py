"""The per-sample noise of `sampling.py`: the fused Threefry draws equal the
documented rows of `jax.random.normal(fold_in(rng, i), (K + 1, *event))`."""

import jax
import jax.extend.random as jxr
import jax.numpy as jnp
import numpy as np
import pytest

import diffusion_jax as dj
from diffusion_jax import sampling


def test_threefry_is_jaxs_bit_for_bit():
  words = jax.random.bits(jax.random.key(11), (2,), jnp.uint32)
  count = jax.random.bits(jax.random.key(12), (64,), jnp.uint32)
  want = jxr.threefry_2x32((words[0], words[1]), count)
  b0, b1 = sampling._threefry2x32(words[0], words[1], count[:32], count[32:])
  np.testing.assert_array_equal(jnp.concatenate([b0, b1]), want)


def test_normal_from_bits_is_jax_random_normal():
  key = jax.random.key(3)
  np.testing.assert_array_equal(sampling._normal_from_bits(jax.random.bits(key, (4096,))),
                                jax.random.normal(key, (4096,)))


def test_mul_wide():
  rng = np.random.default_rng(0)
  a = np.concatenate([rng.integers(0, 2**32, 200, dtype=np.uint64),
                      np.array([0, 1, 2**32 - 1], np.uint64)])
  for b in (0, 1, 3072, 196_608, 2**32 - 1):
    hi, lo = sampling._mul_wide(jnp.asarray(a.astype(np.uint32)), b)
    want = a * np.uint64(b)
    np.testing.assert_array_equal(np.asarray(hi, np.uint64), want >> np.uint64(32))
    np.testing.assert_array_equal(np.asarray(lo, np.uint64), want & np.uint64(2**32 - 1))


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_rows_of_the_documented_normal(impl):
  """Rows n = 0, 1, 7 of normal(key_i, (K + 1, *event)) for global indices i
  (an rbg key enters as the threefry key bits(rng, (2,))); the wide-counter
  path (used when (K + 1) * size > 2**32) agrees."""
  rng = jax.random.key(5, impl=impl)
  index = jnp.arange(3, dtype=jnp.uint32) + 7
  words = sampling._sample_key_words(rng, index)
  event, K = (4, 3), 9
  for n in (0, 1, 7):
    got = sampling._step_noise(words, n, event, K + 1)
    np.testing.assert_array_equal(got, sampling._step_noise(words, n, event, 2**31))
    root = rng if impl == "threefry2x32" else jax.random.wrap_key_data(
        jax.random.bits(rng, (2,), jnp.uint32), impl="threefry2x32")
    keys = [jax.random.fold_in(root, int(i)) for i in index]
    want = np.stack([jax.random.normal(k, (K + 1,) + event)[n] for k in keys])
    np.testing.assert_array_equal(got, want)


def test_x_T_is_row_zero():
  f = dj.make_sample_fn(lambda p, x, t, c: 0.1 * x, dj.get_schedule("linear", 100),
                        shape=(3, 2, 2, 1), sampler="ddpm", num_steps=5,
                        return_trajectory=True)
  rng = jax.random.key(9)
  out = f(None, rng, first_index=4)
  want = np.stack([jax.random.normal(jax.random.fold_in(rng, 4 + b), (6, 2, 2, 1))[0]
                   for b in range(3)])
  np.testing.assert_array_equal(out.trajectory[0], want)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_any_key_impl_is_batch_split_independent(impl):
  schedule = dj.get_schedule("linear", 100)
  make = lambda b: dj.make_sample_fn(lambda p, x, t, c: 0.1 * x, schedule, shape=(b, 2),
                                     sampler="ddpm", num_steps=5)
  rng = jax.random.key(2, impl=impl)
  whole = make(4)(None, rng)
  halves = [make(2)(None, rng, first_index=k) for k in (0, 2)]
  np.testing.assert_array_equal(whole, np.concatenate(halves))
