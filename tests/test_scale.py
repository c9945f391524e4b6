"""Scale: FSDP on a data × fsdp mesh, checkpoints across mesh shapes, gradient
accumulation, bf16 params, learning-rate schedules, the DiT backbone, memory
figures. The mesh tests run on 8 host devices in a subprocess."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _tiny
from diffusion_jax import configuration, models, optim, tasks

MESH_SCRIPT = textwrap.dedent(r"""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, sys.argv[2])
    import _tiny
    from diffusion_jax import configuration, train
    from diffusion_jax.checkpoint import Checkpointer

    assert jax.device_count() == 8
    data_dir, workdir = sys.argv[1], sys.argv[3]
    host = lambda tree: jax.tree_util.tree_map(np.asarray, tree)

    def trained(data, fsdp, steps=3, **extra):
      config = _tiny.make_config(data_dir, {"mesh.data": data, "mesh.fsdp": fsdp,
                                            "model.dropout": 0.0} | extra)
      trainer = train.Trainer(config, configuration.validate_config(config))
      it = iter(train.make_train_loader(config))
      state = trainer.init_state()
      for _ in range(steps):
        state, _ = trainer.train_step(state, trainer.global_batch(next(it)))
      return trainer, state

    # FSDP (1x8, 2x4) and pure data parallelism (8x1) after 3 steps.
    results = {}
    for data, fsdp in ((8, 1), (1, 8), (2, 4), (-1, 4)):
      trainer, state = trained(data, fsdp)
      assert dict(trainer.mesh.shape) == {"data": 8 // fsdp, "fsdp": fsdp}
      kernel = state.params["encoder"]["conv_in"]["kernel"]  # [3, 3, 1, 8]: split on 8 channels
      mu = jax.tree_util.tree_leaves(state.opt_state)     # Adam's moments follow the params
      if fsdp > 1:
        assert kernel.sharding.shard_shape(kernel.shape)[-1] == 8 // fsdp, kernel.sharding
        assert state.ema_params["encoder"]["conv_in"]["kernel"].sharding == kernel.sharding
        assert any(getattr(m, "shape", None) == kernel.shape and m.sharding == kernel.sharding
                   for m in mu)
      results[(data, fsdp)] = host(state.params)
    ref = results[(8, 1)]
    for key, params in results.items():
      for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=str(key))

    # Checkpoints across mesh shapes: 1x8 -> 8x1 -> 2x4, restored directly onto
    # the target shardings; then one device (the test, in its own process).
    ckpt = Checkpointer(workdir)
    trainer, state = trained(1, 8, steps=2)
    it = iter(train.make_train_loader(trainer.config))
    ckpt.save(2, state, b"{}")
    for data, fsdp in ((8, 1), (2, 4)):
      config = _tiny.make_config(data_dir, {"mesh.data": data, "mesh.fsdp": fsdp,
                                            "model.dropout": 0.0})
      other = train.Trainer(config, configuration.validate_config(config))
      restored, _, step = ckpt.restore(other.abstract_state())
      for leaf, sharding in zip(jax.tree_util.tree_leaves(restored),
                                jax.tree_util.tree_leaves(other.state_sharding)):
        assert leaf.sharding == sharding
      for a, b in zip(jax.tree_util.tree_leaves(host(restored)),
                      jax.tree_util.tree_leaves(host(state))):
        np.testing.assert_array_equal(a, b)
    ckpt.close()
    np.savez(workdir + "/params.npz", **{str(i): a for i, a in enumerate(
        jax.tree_util.tree_leaves(host(state)))})
    print("OK")
""")


def test_fsdp_matches_data_parallel_and_checkpoints_move_between_meshes(tmp_path,
                                                                       tmp_path_factory):
  data_dir, cache_dir = _tiny.session_dirs(tmp_path_factory)
  workdir = tmp_path / "ckpt"
  env = _tiny.env(cache_dir, devices=8)
  proc = subprocess.run([sys.executable, "-c", MESH_SCRIPT, data_dir,
                         str(_tiny.ROOT / "tests"), str(workdir)], env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-5000:]
  # ... and onto the one device of this process.
  from diffusion_jax import train
  from diffusion_jax.checkpoint import Checkpointer
  config = _tiny.make_config(data_dir, {"model.dropout": 0.0})
  trainer = train.Trainer(config, configuration.validate_config(config))
  ckpt = Checkpointer(str(workdir), create=False)
  restored, _, _ = ckpt.restore(trainer.abstract_state())
  ckpt.close()
  with np.load(workdir / "params.npz") as f:
    want = [f[str(i)] for i in range(len(f.files))]
  for a, b in zip(jax.tree_util.tree_leaves(restored), want):
    np.testing.assert_array_equal(np.asarray(a), b)


def _trainer(data_dir, **overrides):
  from diffusion_jax import train
  config = _tiny.make_config(data_dir, overrides)
  return train.Trainer(config, configuration.validate_config(config))


@pytest.mark.parametrize("task_config", ["digits.py", "digits_classifier.py"])
def test_gradient_accumulation_equals_the_full_batch(data_dir, task_config):
  """4 micro-batches inside the jitted step give the full batch's update."""
  from diffusion_jax import train
  results = []
  for accum in (1, 4):
    config = _tiny.make_config(data_dir, {"train.grad_accum_steps": accum,
                                          "model.dropout": 0.0},
                               path=_tiny.ROOT / "configs" / task_config)
    trainer = train.Trainer(config, configuration.validate_config(config))
    batch = trainer.global_batch(next(iter(train.make_train_loader(config))))
    state, metrics = trainer.train_step(trainer.init_state(), batch)
    results.append((jax.device_get(state.params), float(metrics["loss"])))
  (p1, l1), (p4, l4) = results
  assert abs(l1 - l4) < 1e-5 * max(1.0, abs(l1))
  for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p4)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bfloat16_params_and_optimizer_state_with_a_float32_ema(data_dir):
  from diffusion_jax import train
  trainer = _trainer(data_dir, **{"train.param_dtype": "bfloat16"})
  config = trainer.config
  batch = trainer.global_batch(next(iter(train.make_train_loader(config))))
  state = trainer.init_state()
  for _ in range(2):
    state, metrics = trainer.train_step(state, batch)
  dtypes = lambda tree: {np.dtype(x.dtype) for x in jax.tree_util.tree_leaves(tree)
                         if jnp.issubdtype(x.dtype, jnp.floating)}
  assert dtypes(state.params) == {np.dtype(jnp.bfloat16)}
  assert dtypes(state.opt_state) == {np.dtype(jnp.bfloat16)}
  assert dtypes(state.ema_params) == {np.dtype(jnp.float32)}
  assert np.isfinite(float(metrics["loss"])) and int(metrics["skipped"]) == 0


@pytest.mark.parametrize("name", optim.LR_SCHEDULES)
def test_learning_rate_schedules(name):
  """Warm-up from 0, then the schedule's closed form (peak 1e-3, 10 warm-up
  steps, 110 steps in all, end factor 0.1)."""
  peak, w, total, end = 1e-3, 10, 110, 0.1
  lr = optim.learning_rate_schedule(name, learning_rate=peak, warmup_steps=w,
                                    total_steps=total, end_factor=end)
  for n in (0, 5, 10, 40, 110):
    got = float(lr(n)) if callable(lr) else lr
    if n <= w:
      want = peak * n / w
    elif name == "constant":
      want = peak
    elif name == "cosine":
      want = end * peak + (peak - end * peak) * 0.5 * (1 + math.cos(math.pi * (n - w) / (total - w)))
    elif name == "linear":
      want = peak + (end * peak - peak) * (n - w) / (total - w)
    else:
      want = peak * math.sqrt(w / n)
    assert abs(got - want) < 1e-9 + 1e-6 * peak, (name, n, got, want)


def test_constant_schedule_without_warmup_keeps_the_old_optimizer_state():
  """A constant rate without warm-up is a float (old checkpoints' opt_state layout)."""
  assert optim.learning_rate_schedule("constant", learning_rate=1e-3) == 1e-3


def test_dit_is_a_network_chosen_by_name(data_dir):
  config = _tiny.make_config(data_dir, {}, path=_tiny.ROOT / "configs" / "digits_dit.py")
  spec = configuration.validate_config(config)
  net = tasks.get_task(config.task).model(config, spec)
  assert type(net).__name__ == "DiT" and net.num_classes == 10
  from diffusion_jax import train
  trainer = train.Trainer(config, spec)
  batch = trainer.global_batch(next(iter(train.make_train_loader(config))))
  state, metrics = trainer.train_step(trainer.init_state(), batch)
  assert np.isfinite(float(metrics["loss"]))


def test_dit_xl2_has_the_papers_parameter_count():
  config = _tiny.load_config_file(_tiny.ROOT / "configs" / "imagenet256_dit_xl2.py")
  from diffusion_jax.conditioning import DataSpec
  spec = DataSpec(32, 4, 1000, "class")
  net = tasks.get_task(config.task).model(config, spec)
  shapes = jax.eval_shape(lambda: models.init_params(net, spec, jax.random.key(0)))
  # 675,129,632 in the paper's count, which includes the fixed 256 x 1152
  # positional embedding (a constant here, not a parameter).
  assert models.count_params(shapes) + 256 * 1152 == 675_129_632


def test_remat_keeps_the_parameters_and_the_loss(data_dir):
  from diffusion_jax import train
  out = []
  for remat in (None, "nothing_saveable"):
    trainer = _trainer(data_dir, **{"model.remat": remat, "model.dropout": 0.0})
    batch = trainer.global_batch(next(iter(train.make_train_loader(trainer.config))))
    state, metrics = trainer.train_step(trainer.init_state(), batch)
    out.append((jax.device_get(state.params), float(metrics["loss"])))
  assert jax.tree_util.tree_structure(out[0][0]) == jax.tree_util.tree_structure(out[1][0])
  assert abs(out[0][1] - out[1][1]) < 1e-6
