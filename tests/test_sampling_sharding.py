"""Sharded sampling on 8 host devices gives the samples of one device.

Runs in a subprocess because XLA_FLAGS=--xla_force_host_platform_device_count=8
must be set before JAX is imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(r"""
    import sys
    assert "jax" not in sys.modules
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    import diffusion_jax as dj
    from diffusion_jax.sampling import make_invert_fn, make_sample_fn

    assert jax.device_count() == 8, jax.devices()
    one = jax.devices()[:1]
    schedule = dj.get_schedule("linear", 100)

    def model_fn(params, x, t, cond):
      return (params["w"] * x + 0.1 * cond["scale"] * cond["y"][:, None]
              + 0.001 * t[:, None].astype(jnp.float32))

    # Params committed to device 0, as after a single-device restore.
    params = jax.device_put({"w": jnp.float32(0.3)}, jax.devices()[0])
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                    rtol=1e-6, atol=1e-6)

    def both(make, call, **kw):
      return call(make(**kw)), call(make(devices=one, **kw))

    # B = 16 over 8 devices: a stochastic and a deterministic-noise sampler,
    # with trajectory and x0-predictions (sharded along their axis 1).
    B = 16
    cond = {"y": jnp.arange(B, dtype=jnp.float32), "scale": jnp.float32(2.0)}
    for sampler, eta in (("ddpm", 0.0), ("ddim", 0.5)):
      many, single = both(
          lambda **k: make_sample_fn(model_fn, schedule, **k),
          lambda f: f(params, jax.random.key(0), cond=cond),
          shape=(B, 3), sampler=sampler, eta=eta, num_steps=20,
          return_trajectory=True, x0_steps=(1, 20))
      for a, b in zip(many, single):
        assert a.shape == b.shape
        close(a, b)
      assert len(many.x0.sharding.device_set) == 8
      assert many.x0.sharding.shard_shape(many.x0.shape) == (B // 8, 3), many.x0.sharding
      assert not many.trajectory.sharding.is_fully_replicated
    x_T = jax.random.normal(jax.random.key(1), (B, 3))
    close(*both(lambda **k: make_invert_fn(model_fn, schedule, **k),
                lambda f: f(params, x_T, cond=cond), shape=(B, 3), num_steps=10))

    # B = 13, not divisible: padded to a multiple of the device count, cut back.
    B = 13
    cond = {"y": jnp.arange(B, dtype=jnp.float32), "scale": jnp.float32(2.0)}
    many, single = both(lambda **k: make_sample_fn(model_fn, schedule, **k),
                        lambda f: f(params, jax.random.key(0), cond=cond),
                        shape=(B, 3), sampler="dpmpp_2m", num_steps=20)
    assert many.shape == (B, 3)
    close(many, single)
    # Legacy key, given x_T, 4 of the 8 devices.
    x_T = jax.random.normal(jax.random.key(1), (B, 3))
    call = lambda f: f(params, jax.random.PRNGKey(3), x_T=x_T, cond=cond)
    kw = dict(shape=(B, 3), sampler="ddpm", num_steps=10)
    close(call(make_sample_fn(model_fn, schedule, devices=jax.devices()[:4], **kw)),
          call(make_sample_fn(model_fn, schedule, devices=one, **kw)))
    print("OK")
""")


COMPOSE = textwrap.dedent(r"""
    import functools
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import diffusion_jax as dj

    assert jax.device_count() == 8
    schedule = dj.get_schedule("linear", 100)
    model_fn = lambda params, x, t, cond: params * x
    params, B = jnp.float32(0.3), 4
    f = dj.make_sample_fn(model_fn, schedule, shape=(B, 2), sampler="ddpm", num_steps=10)
    keys = jax.random.split(jax.random.key(0), 8)
    want = np.stack([np.asarray(f(params, k)) for k in keys])    # top level, sharded
    close = lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)

    # jit, vmap and jit(vmap) of the caller.
    close(jax.jit(f)(params, keys[0]), want[0])
    close(jax.vmap(lambda k: f(params, k))(keys), want)
    close(jax.jit(jax.vmap(lambda k: f(params, k)))(keys), want)
    # pmap over the 8 devices, one key each.
    close(jax.pmap(lambda k: f(params, k))(keys), want)
    # shard_map over a mesh of the 8 devices (manual axis), one key per device.
    mesh = Mesh(np.asarray(jax.devices()), ("i",))
    sm = jax.shard_map(lambda k: f(params, k[0])[None], mesh=mesh, in_specs=P("i"),
                       out_specs=P("i"))
    close(jax.jit(sm)(keys), want)
    # A caller's jit whose inputs live on a subset of the devices (4 of 8).
    sub = Mesh(np.asarray(jax.devices()[4:]), ("d",))
    x_T = jax.random.normal(jax.random.key(1), (B, 2))
    want_x = np.asarray(f(params, keys[0], x_T=x_T))
    x_sub = jax.device_put(x_T, NamedSharding(sub, P("d")))
    p_sub = jax.device_put(params, NamedSharding(sub, P()))
    out = jax.jit(lambda p, x: f(p, keys[0], x_T=x))(p_sub, x_sub)
    close(out, want_x)
    assert out.sharding.device_set <= set(jax.devices()[4:]), out.sharding
    # ... and at top level, inputs committed to a subset are moved to the mesh.
    close(f(p_sub, keys[0], x_T=x_sub), want_x)
    print("OK")
""")


def _run_on_8_devices(script: str):
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=8").strip()
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr


def test_sharded_sampling_matches_single_device():
  _run_on_8_devices(SCRIPT)


def test_sample_fn_composes_with_the_callers_transformations():
  """With devices=None on an 8-device host, sample_fn works inside the caller's
  jit, vmap, pmap and shard_map, and with inputs on a subset of the devices,
  and gives the samples of a top-level call."""
  _run_on_8_devices(COMPOSE)
