"""Progressive distillation (Salimans & Ho 2022) with analytic teachers, no network.

The teacher is the exact ε-model of Gaussian data (tests/test_samplers.py), so
its DDIM chain is affine in x_T; a student whose x̂_0 is a per-timestep affine
function of x_t can represent every distillation target exactly, which makes
"the distilled N-step student reproduces the 2N-step teacher" a sharp test.
"""

from __future__ import annotations

import functools
import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import diffusion_jax as dj
from diffusion_jax import distillation as pd
from diffusion_jax.sampling import make_sample_fn
from diffusion_jax.schedules import make_timesteps

from test_samplers import alphas_cumprod64, gaussian_model

T = 1000
LIN = dj.get_schedule("linear", T)
MU, S = np.array([0.5, -1.0]), np.array([0.3, 1.2])
BASE8 = make_timesteps(T, 8, "trailing")


# ----------------------------------------------------------------------------
# Grids.
# ----------------------------------------------------------------------------


def test_round_grids_nest_and_equal_trailing_grids():
  base = make_timesteps(T, 64, "trailing")
  assert pd.num_rounds(64) == 6
  np.testing.assert_array_equal(pd.round_timesteps(base, -1), base)
  for r in range(6):
    student, teacher = pd.round_timesteps(base, r), pd.round_timesteps(base, r - 1)
    assert student.size == 64 // 2 ** (r + 1) and student[-1] == T - 1
    np.testing.assert_array_equal(student, teacher[1::2])   # every other teacher point
    np.testing.assert_array_equal(student, make_timesteps(T, student.size, "trailing"))


@pytest.mark.parametrize("base", [[0, 5, 9], [3, 2], [0, 1000], [0.0, 1.0], [7], [[0, 1]]])
def test_bad_base_grid(base):
  with pytest.raises(ValueError, match="base_timesteps"):
    pd.check_base_grid(base, T)


@pytest.mark.parametrize("round_", [-2, 3, 1.0])
def test_bad_round(round_):
  with pytest.raises(ValueError, match="round must be an integer in"):
    pd.round_timesteps(BASE8, round_)


def test_loss_rejects_round_minus_one():
  x = jnp.zeros((2, 2))
  with pytest.raises(ValueError, match=r"round must be an integer in \[0, 2\]"):
    pd.progressive_distillation_loss(lambda x, t: x, lambda x, t: x, LIN, BASE8, -1, x,
                                     jnp.zeros((2,), jnp.int32), x)


def test_student_indices_cover_the_round_grid():
  draw = jax.jit(pd.sample_student_indices, static_argnums=(1, 2))
  for r, n in ((0, 4), (1, 2), (2, 1)):
    j = np.asarray(draw(jax.random.key(r), 4000, 8, jnp.int32(r)))
    assert j.min() == 0 and j.max() == n - 1
    np.testing.assert_allclose(np.bincount(j) / j.size, 1.0 / n, atol=0.03)


# ----------------------------------------------------------------------------
# The target and the loss against float64 references.
# ----------------------------------------------------------------------------


def test_target_makes_one_ddim_step_land_on_the_teacher():
  rng = np.random.default_rng(0)
  z_t, z_next = rng.normal(size=(2, 5, 3))
  for ab_t, ab_next in ((0.1, 0.4), (0.7, 0.95), (0.2, 1.0)):
    x_tilde = np.asarray(jax.jit(pd.distillation_target)(z_t, z_next, ab_t, ab_next),
                         np.float64)
    eps = (z_t - np.sqrt(ab_t) * x_tilde) / np.sqrt(1 - ab_t)   # DDIM's ε̂ from x̃
    landed = np.sqrt(ab_next) * x_tilde + np.sqrt(1 - ab_next) * eps
    np.testing.assert_allclose(landed, z_next, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(x_tilde, z_next, rtol=1e-6)   # ᾱ_next = 1: x̃ = z''


def _reference_loss(round_, x0, j, noise, clip):
  """Salimans & Ho 2022, Alg. 2 in float64 NumPy: teacher = exact Gaussian ε,
  student = the fake ε̂ = 0.3 x_t + 0.002 t."""
  ab = alphas_cumprod64("linear", T)
  alpha_bar = lambda k: 1.0 if k < 0 else ab[BASE8[k]]
  out = []
  for b in range(x0.shape[0]):
    k = (j[b] + 1) * 2 ** (round_ + 1) - 1
    ks = [k, k - 2 ** round_, k - 2 ** (round_ + 1)]
    a_t = alpha_bar(ks[0])
    z_t = np.sqrt(a_t) * x0[b] + np.sqrt(1 - a_t) * noise[b]
    z = z_t
    for k_now, k_to in zip(ks[:2], ks[1:]):
      a, a_to = alpha_bar(k_now), alpha_bar(k_to)
      x0_hat = MU + np.sqrt(a) * S ** 2 / (a * S ** 2 + 1 - a) * (z - np.sqrt(a) * MU)
      if clip is not None:
        x0_hat = np.clip(x0_hat, -clip, clip)
      eps = (z - np.sqrt(a) * x0_hat) / np.sqrt(1 - a)
      z = np.sqrt(a_to) * x0_hat + np.sqrt(1 - a_to) * eps
    a_n = alpha_bar(ks[2])
    ratio = np.sqrt(1 - a_n) / np.sqrt(1 - a_t)
    target = (z - ratio * z_t) / (np.sqrt(a_n) - ratio * np.sqrt(a_t))
    eps_s = 0.3 * z_t + 0.002 * BASE8[k]
    x0_s = (z_t - np.sqrt(1 - a_t) * eps_s) / np.sqrt(a_t)
    out.append(max(a_t / (1 - a_t), 1.0) * np.mean((target - x0_s) ** 2))
  return np.array(out)


@pytest.mark.parametrize("round_,clip", [(0, None), (1, None), (2, None), (0, 1.0)])
def test_loss_matches_float64_reference(round_, clip):
  n = 8 // 2 ** (round_ + 1)
  rng = np.random.default_rng(round_)
  x0 = rng.normal(MU, S, size=(6, 2))
  noise = rng.normal(size=(6, 2))
  j = np.arange(6) % n
  teacher = functools.partial(gaussian_model(LIN, MU, S), None, cond=None)
  student = lambda x, t: 0.3 * x + 0.002 * t[:, None].astype(jnp.float32)
  loss_fn = jax.jit(functools.partial(
      pd.progressive_distillation_loss, student, teacher, LIN, BASE8, prediction="eps",
      teacher_clip_x0=clip))
  out = loss_fn(jnp.int32(round_), jnp.asarray(x0, jnp.float32), jnp.asarray(j, jnp.int32),
                jnp.asarray(noise, jnp.float32))
  np.testing.assert_array_equal(out["t"], BASE8[(j + 1) * 2 ** (round_ + 1) - 1])
  np.testing.assert_allclose(out["loss"], _reference_loss(round_, x0, j, noise, clip),
                             rtol=2e-3, atol=1e-6)


def test_traced_out_of_range_gives_nan_and_rounds_share_one_trace():
  count = [0]

  def student(x, t):
    count[0] += 1
    return x

  teacher = functools.partial(gaussian_model(LIN, MU, S), None, cond=None)
  loss_fn = jax.jit(functools.partial(pd.progressive_distillation_loss, student, teacher,
                                      LIN, BASE8, prediction="eps"))
  x = jnp.ones((2, 2))
  for r, j in ((0, [0, 3]), (1, [1, 0]), (2, [0, 0])):
    assert np.all(np.isfinite(loss_fn(jnp.int32(r), x, jnp.array(j, jnp.int32), x)["loss"]))
  assert count[0] == 1
  bad = loss_fn(jnp.int32(3), x, jnp.array([0, 0], jnp.int32), x)["loss"]   # no round 3
  assert np.all(np.isnan(bad))
  bad = loss_fn(jnp.int32(1), x, jnp.array([2, -1], jnp.int32), x)["loss"]  # N = 2
  assert np.all(np.isnan(bad))


# ----------------------------------------------------------------------------
# Learning: the distilled students reproduce the 8-step teacher.
# ----------------------------------------------------------------------------


def affine_x0_model(params, x, t, cond):
  """A per-training-index affine x̂_0 = a[t] x + b[t] (prediction "x0")."""
  return params["a"][t] * x + params["b"][t]


def distill_round(teacher_fn, teacher_params, teacher_prediction, round_, steps=300):
  """One round from a student initialized at x̂_0 = 0; returns its params."""
  params = {"a": jnp.zeros((T, 2)), "b": jnp.zeros((T, 2))}
  opt = optax.adam(0.05)
  teacher = lambda x, t: teacher_fn(teacher_params, x, t, None)

  def loss(params, key):
    k_x, k_j, k_n = jax.random.split(key, 3)
    x0 = MU + S * jax.random.normal(k_x, (512, 2))
    j = pd.sample_student_indices(k_j, 512, BASE8.size, round_)
    out = pd.progressive_distillation_loss(
        lambda x, t: affine_x0_model(params, x, t, None), teacher, LIN, BASE8, round_,
        x0, j, jax.random.normal(k_n, x0.shape), prediction="x0",
        teacher_prediction=teacher_prediction)
    return jnp.mean(out["loss"])

  @jax.jit
  def train(params):
    def step(carry, key):
      params, opt_state = carry
      grads = jax.grad(loss)(params, key)
      updates, opt_state = opt.update(grads, opt_state)
      return (optax.apply_updates(params, updates), opt_state), None
    keys = jax.random.split(jax.random.key(round_), steps)
    return jax.lax.scan(step, (params, opt.init(params)), keys)[0][0]

  return train(params)


@pytest.mark.slow
def test_two_rounds_give_a_two_step_student_equal_to_the_eight_step_teacher():
  exact = gaussian_model(LIN, MU, S)
  x_T = jax.random.normal(jax.random.key(5), (2000, 2))
  run = lambda fn, params, ts, prediction: make_sample_fn(
      fn, LIN, shape=x_T.shape, sampler="ddim", timesteps=ts,
      prediction=prediction)(params, jax.random.key(0), x_T=x_T)
  teacher8 = np.asarray(run(exact, None, BASE8, "eps"))
  students = [distill_round(exact, None, "eps", 0)]
  students.append(distill_round(affine_x0_model, students[0], "x0", 1))
  for r, params in enumerate(students):
    ts = pd.round_timesteps(BASE8, r)
    got = np.asarray(run(affine_x0_model, params, ts, "x0"))
    undistilled = np.asarray(run(exact, None, ts, "eps"))   # the teacher with N steps
    err, err_teacher = np.abs(got - teacher8).max(), np.abs(undistilled - teacher8).max()
    assert err < 0.02 and err < 0.05 * err_teacher, (r, err, err_teacher)


# ----------------------------------------------------------------------------
# The CLI task "distill" (tiny UNet, T = 10; base grid of 8 steps).
# ----------------------------------------------------------------------------

import _tiny  # noqa: E402
from diffusion_jax import configuration, conditioning, models, tasks, workdir as workdir_lib, modes, train  # noqa: E402

CONFIGS = _tiny.ROOT / "configs"


@pytest.fixture(scope="module")
def teacher_dir(v_teacher_dir):
  return v_teacher_dir


def _distill_config(data_dir, teacher_dir, **overrides):
  settings = {"distill.teacher_workdir": str(teacher_dir), "distill.base_num_steps": 8,
              "distill.steps_per_round": 2, "train.num_steps": 4, "train.log_every": 1,
              "train.checkpoint_every": 1, "train.keep_checkpoints": 4}
  return _tiny.make_config(data_dir, settings | overrides, path=CONFIGS / "digits_distill.py")


@pytest.mark.slow
def test_distill_rounds_checkpoints_resume_and_sample(data_dir, teacher_dir, tmp_path):
  config = _distill_config(data_dir, teacher_dir)
  final = train.train_and_evaluate(config, str(tmp_path))
  teacher = _tiny.restore(_tiny.make_config(data_dir, path=CONFIGS / "digits_v.py"),
                          teacher_dir)[0].ema_params
  ckpt = {s: _tiny.restore(config, tmp_path, s)[0] for s in (1, 2, 3)}
  # Round 0 learns from the teacher run's EMA params, and starts from them.
  _tiny.assert_trees_equal(ckpt[2].frozen["teacher"], teacher)
  assert int(ckpt[2].frozen["round"]) == 0
  # Round 1 (steps 3, 4) learns from the student's EMA at the end of round 0.
  _tiny.assert_trees_equal(ckpt[3].frozen["teacher"], ckpt[2].ema_params)
  assert int(ckpt[3].frozen["round"]) == 1
  rounds = [json.loads(line)["round"] for line in open(tmp_path / "metrics.jsonl")]
  assert rounds == [0, 0, 1, 1]

  # Resuming needs only the checkpoint (the teacher rides in it) and replays
  # the same steps bit for bit.
  for step in (3, 4):
    shutil.rmtree(tmp_path / "checkpoints" / str(step))
  moved = tmp_path.parent / "teacher_moved"
  shutil.move(str(teacher_dir), moved)
  try:
    resumed = train.train_and_evaluate(config, str(tmp_path))
  finally:
    shutil.move(str(moved), teacher_dir)
  _tiny.assert_trees_equal(jax.device_get(resumed), jax.device_get(final))

  # The student samples with DDIM on its 2-step grid; bits/dim is refused.
  from diffusion_jax import generate
  np.testing.assert_array_equal(tasks.get_task(config.task).sampling.grid(config)["timesteps"], [4, 9])
  with np.load(modes.sample(config, str(tmp_path))) as f:
    assert f["images"].shape == (8, 8, 8, 1)
  with pytest.raises(ValueError, match="eval.metrics .bpd. needs"):
    modes.evaluate(config, str(tmp_path))

  # More train.num_steps continue with a third round (2 -> 1 steps), whose
  # teacher is the final student of round 1.
  longer = _distill_config(data_dir, teacher_dir, **{"train.num_steps": 6})
  train.train_and_evaluate(longer, str(tmp_path))
  _tiny.assert_trees_equal(_tiny.restore(longer, tmp_path, 5)[0].frozen["teacher"],
                           _tiny.restore(longer, tmp_path, 4)[0].ema_params)
  np.testing.assert_array_equal(tasks.get_task(longer.task).sampling.grid(longer)["timesteps"], [9])


@pytest.mark.parametrize("overrides,message", [
    ({"distill.teacher_workdir": None}, "distill.teacher_workdir"),
    ({"distill.base_num_steps": 6}, "distill.base_num_steps"),
    ({"distill.base_num_steps": 16}, "distill.base_num_steps"),   # > T = 10
    ({"train.num_steps": 5}, "distill.steps_per_round"),
    ({"train.num_steps": 8}, "1 to 3 rounds"),
    ({"distill.base_spacing": "cubic"}, "distill.base_spacing"),
    ({"sample.sampler": "ddpm"}, "sample.sampler='ddim'"),
    ({"sample.eta": 1.0}, "sample.eta=0"),
    ({"distill.teacher_clip_x0": -1.0}, "distill.teacher_clip_x0"),
])
def test_bad_distill_settings(data_dir, tmp_path, overrides, message):
  config = _distill_config(data_dir, tmp_path, **overrides)
  with pytest.raises(ValueError, match=re.escape(message)):
    configuration.validate_config(config)


@pytest.mark.slow
@pytest.mark.parametrize("overrides,message", [
    ({"model.ch": 16}, "'model.ch': (8, 16)"),
    ({"diffusion.prediction": "eps"}, "'diffusion.prediction': ('v', 'eps')"),
])
def test_teacher_must_match_the_student(data_dir, teacher_dir, tmp_path, overrides, message):
  config = _distill_config(data_dir, teacher_dir, **overrides)
  with pytest.raises(ValueError, match=re.escape(message)):
    train.train_and_evaluate(config, str(tmp_path / "student"))
  assert not (tmp_path / "student").exists()


def test_teacher_workdir_without_a_run(data_dir, tmp_path):
  config = _distill_config(data_dir, tmp_path / "nothing")
  with pytest.raises(ValueError, match="distill.teacher_workdir=.*holds no readable"):
    train.train_and_evaluate(config, str(tmp_path / "student"))
  assert not (tmp_path / "student").exists()
