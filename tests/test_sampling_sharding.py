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


def test_sharded_sampling_matches_single_device():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=8").strip()
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout + proc.stderr
