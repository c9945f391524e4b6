"""Tests of models/convert_diffusers.py against diffusers' UNet2DModel (torch, CPU).

Nothing is downloaded: the diffusers models are built from config dicts with
random weights, saved to tmp dirs and loaded back from there.
"""

import inspect
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import diffusion_jax as dj  # noqa: E402
from diffusion_jax.models import convert_diffusers  # noqa: E402
from diffusion_jax.models import unet  # noqa: E402

# google/ddpm-cifar10-32's published config.json (Ho et al.'s CIFAR-10 model);
# the fields it omits take UNet2DModel's defaults, as in diffusers.
CIFAR10_CONFIG = {
    "_class_name": "UNet2DModel",
    "_diffusers_version": "0.0.4",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}

# A small model of the family with multi-head attention at two levels.
SMALL_CONFIG = {
    **CIFAR10_CONFIG,
    "attention_head_dim": 8,
    "block_out_channels": [16, 16],
    "down_block_types": ["AttnDownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D"],
    "in_channels": 1,
    "out_channels": 1,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 8,
}


def _diffusers_model(config, seed=0):
  """A UNet2DModel (eval mode) with every parameter perturbed, so that
  GroupNorm affines and biases are non-trivial too."""
  torch.manual_seed(seed)
  fields = {k: v for k, v in config.items() if not k.startswith("_")}
  model = diffusers.UNet2DModel(**fields).eval()
  with torch.no_grad():
    for p in model.parameters():
      std = p.std().item() if p.numel() > 1 else 0.0
      p.add_(torch.randn_like(p) * (0.5 * std if std > 0 else 0.1))
  return model


def _save(model, folder, config, **kwargs):
  model.save_pretrained(str(folder), **kwargs)
  # save_pretrained writes the full config; keep the published (shorter) one.
  (folder / "config.json").write_text(json.dumps(config))
  return folder


def _run_both(torch_model, model, params, x_nchw, ts):
  with torch.no_grad():
    ref = torch_model(torch.from_numpy(x_nchw), torch.tensor(ts)).sample.numpy()
  out = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t, train=False))(
      params, jnp.asarray(x_nchw.transpose(0, 2, 3, 1)), jnp.asarray(ts, jnp.int32))
  return np.asarray(out), ref.transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
  torch_model = _diffusers_model(CIFAR10_CONFIG)
  folder = _save(torch_model, tmp_path_factory.mktemp("ddpm_cifar10"), CIFAR10_CONFIG,
                 safe_serialization=True)
  assert (folder / convert_diffusers.SAFETENSORS_NAME).is_file()
  return torch_model, folder


def test_cifar10_matches_diffusers_forward(cifar10):
  torch_model, folder = cifar10
  kwargs, params = convert_diffusers.load_diffusers_unet(folder)
  assert kwargs == dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                        dropout=0.0, num_heads=1, num_groups=32, resamp_with_conv=True,
                        out_channels=3)
  leaves = jax.tree.leaves(params)
  assert all(isinstance(a, jax.Array) and a.dtype == jnp.float32 for a in leaves)
  assert sum(a.size for a in leaves) == 35_746_307  # Ho et al.'s CIFAR-10 model.
  model = unet.UNet(**kwargs)
  x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
  for ts in ([0, 999], [250, 617]):
    out, ref = _run_both(torch_model, model, params, x, ts)
    assert np.abs(ref).max() > 0.5  # A non-trivial output...
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)  # ...matched layer for layer.


def test_multi_head_config_matches_and_samples(tmp_path):
  torch_model = _diffusers_model(SMALL_CONFIG, seed=1)
  folder = _save(torch_model, tmp_path / "small", SMALL_CONFIG, safe_serialization=True)
  kwargs, params = convert_diffusers.load_diffusers_unet(folder)
  assert kwargs["num_heads"] == 2 and kwargs["attn_resolutions"] == (8, 4)
  model = unet.UNet(**kwargs)
  x = np.random.default_rng(1).normal(size=(2, 1, 8, 8)).astype(np.float32)
  out, ref = _run_both(torch_model, model, params, x, [3, 871])
  np.testing.assert_allclose(out, ref, rtol=0, atol=1e-4)

  # The module docstring's sampling recipe.
  schedule = dj.get_schedule("linear", num_timesteps=1000)
  model_fn = lambda p, x_t, t, cond: model.apply({"params": p}, x_t, t, train=False)
  sample_fn = dj.make_sample_fn(model_fn, schedule, shape=(2, 8, 8, 1), sampler="ddim",
                                num_steps=2, clip_x0=1.0)
  x0 = sample_fn(params, jax.random.key(0))
  assert x0.shape == (2, 8, 8, 1) and np.isfinite(np.asarray(x0)).all()


def test_bin_pipeline_folder_and_deprecated_attention_names(cifar10, tmp_path):
  """A torch .bin with the pre-0.14 attention names (query/key/value/proj_attn,
  as in google/ddpm-*'s files) in a pipeline's unet/ folder loads the same."""
  torch_model, folder = cifar10
  _, expected = convert_diffusers.load_diffusers_unet(folder)
  old = {}
  for k, v in torch_model.state_dict().items():
    for new, dep in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"),
                     ("to_out.0", "proj_attn")):
      k = k.replace(f".{new}.", f".{dep}.")
    old[k] = v
  assert "mid_block.attentions.0.proj_attn.weight" in old
  unet_dir = tmp_path / "pipeline" / "unet"
  unet_dir.mkdir(parents=True)
  torch.save(old, unet_dir / convert_diffusers.BIN_NAME)
  (unet_dir / "config.json").write_text(json.dumps(CIFAR10_CONFIG))
  kwargs, params = convert_diffusers.load_diffusers_unet(tmp_path / "pipeline")
  assert kwargs["ch"] == 128
  jax.tree.map(np.testing.assert_array_equal, params, expected)


def test_weights_not_matching_the_config_are_refused(cifar10, tmp_path):
  _, folder = cifar10
  name = convert_diffusers.SAFETENSORS_NAME
  (tmp_path / name).symlink_to(folder / name)
  (tmp_path / "config.json").write_text(json.dumps({**CIFAR10_CONFIG, "layers_per_block": 1}))
  with pytest.raises(ValueError, match="unused keys.*down_blocks.0.resnets.1"):
    convert_diffusers.load_diffusers_unet(tmp_path)


def test_unsupported_config_is_refused_naming_each_field(tmp_path):
  config = {**CIFAR10_CONFIG, "resnet_time_scale_shift": "scale_shift", "freq_shift": 0,
            "flip_sin_to_cos": True, "downsample_padding": 1, "norm_eps": 1e-5,
            "num_class_embeds": 10, "up_block_types": ["UpBlock2D"] * 4}
  del config["attention_head_dim"]  # diffusers' default, 8: 32 heads, supported.
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(ValueError) as info:  # Refused before the (absent) weights are read.
    convert_diffusers.load_diffusers_unet(tmp_path)
  msg = str(info.value)
  for part in ("resnet_time_scale_shift='scale_shift' (supported: 'default')",
               "freq_shift=0 (supported: 1)", "flip_sin_to_cos=True (supported: False)",
               "downsample_padding=1 (supported: 0)", "norm_eps=1e-05 (supported: 1e-06",
               "num_class_embeds=10 (supported: None)",
               "up_block_types=['UpBlock2D', 'UpBlock2D', 'UpBlock2D', 'UpBlock2D'] "
               "(supported: attention at the levels of down_block_types: "
               "('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'))"):
    assert part in msg, (part, msg)
  assert "attention_head_dim" not in msg
  assert convert_diffusers.unet_kwargs_from_config(
      {k: v for k, v in CIFAR10_CONFIG.items() if k != "attention_head_dim"})["num_heads"] == 32
  for bad, field in (({"time_embedding_type": "fourier"}, "time_embedding_type='fourier'"),
                     ({"attention_head_dim": 48}, "attention_head_dim=48"),
                     ({"sample_size": None}, "sample_size=None"),
                     ({"center_input_sample": True}, "center_input_sample=True"),
                     ({"scale_factor": 2}, "scale_factor=2")):
    with pytest.raises(ValueError, match=field.replace("(", r"\(")):
      convert_diffusers.unet_kwargs_from_config({**CIFAR10_CONFIG, **bad})
  with pytest.raises(FileNotFoundError, match="config.json"):
    convert_diffusers.load_diffusers_unet(tmp_path / "missing")


def test_defaults_are_diffusers_defaults():
  signature = inspect.signature(diffusers.UNet2DModel.__init__).parameters
  defaults = {k: p.default for k, p in signature.items() if k != "self"}
  assert convert_diffusers.UNET2D_DEFAULTS == defaults


def test_load_a_diffusers_folder_for_sampling(tmp_path):
  """`diffusion_jax.load` of a diffusers pipeline folder (unet/ + scheduler/):
  the converted model, the scheduler's schedule, ready for make_sample_fn."""
  torch_model = _diffusers_model(SMALL_CONFIG, seed=2)
  pipeline = tmp_path / "pipeline"
  _save(torch_model, pipeline / "unet", SMALL_CONFIG, safe_serialization=True)
  (pipeline / "scheduler").mkdir()
  (pipeline / "scheduler" / "scheduler_config.json").write_text(json.dumps({
      "_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": 0.0001,
      "beta_end": 0.02, "num_train_timesteps": 100}))
  model = dj.load(str(pipeline))
  assert model.shape == (8, 8, 1) and model.prediction == "eps"
  assert model.schedule.num_timesteps == 100
  x = np.random.default_rng(3).normal(size=(2, 1, 8, 8)).astype(np.float32)
  with torch.no_grad():
    ref = torch_model(torch.from_numpy(x), torch.tensor([5, 60])).sample.numpy()
  out = model.model_fn(model.params, jnp.asarray(x.transpose(0, 2, 3, 1)),
                       jnp.asarray([5, 60], jnp.int32), None)
  np.testing.assert_allclose(np.asarray(out), ref.transpose(0, 2, 3, 1), rtol=0, atol=1e-4)
  x0 = dj.make_sample_fn(model.model_fn, model.schedule, shape=(2, *model.shape),
                         num_steps=3)(model.params, jax.random.key(0))
  assert np.isfinite(np.asarray(x0)).all()
