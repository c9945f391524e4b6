"""benchmarks/accelerator.py: its helpers, and its smoke mode end to end (CPU)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "accelerator.py"


def _bench():
  spec = importlib.util.spec_from_file_location("accelerator_bench", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_peak_table():
  bench = _bench()
  assert bench.device_peaks("NVIDIA H100 80GB HBM3")["name"] == "NVIDIA H100 SXM"
  assert bench.device_peaks("NVIDIA H100 PCIe")["bf16"] == 756e12
  h200 = bench.device_peaks("NVIDIA H200")
  assert (h200["bf16"], h200["f32_rows"], h200["f32_rows_kind"]) == (989e12, 495e12, "tf32")
  assert bench.device_peaks("NVIDIA A100-SXM4-80GB")["bf16"] == 312e12
  assert bench.device_peaks("TPU v5 lite")["name"] == "TPU v5e"
  assert bench.device_peaks("TPU v5p")["name"] == "TPU v5p"
  assert bench.device_peaks("TPU v6 lite")["f32_rows"] == 918e12
  assert bench.device_peaks("TPU v4")["bf16"] == 275e12
  assert bench.device_peaks("cpu") is None


def test_pytorch_model_is_google_ddpm_cifar10_32():
  """The PyTorch side builds google/ddpm-cifar10-32's UNet2DModel (with the
  config's dropout), and the converter maps it back to the project's UNet."""
  from diffusion_jax.configs import cifar10_ddpm
  from diffusion_jax.models import convert_diffusers
  bench = _bench()
  sys.path.insert(0, str(ROOT / "tests"))
  try:
    published = pytest.importorskip("test_convert_diffusers").CIFAR10_CONFIG
  finally:
    sys.path.remove(str(ROOT / "tests"))
  config = cifar10_ddpm.get_config()
  ours = bench.diffusers_config(config.model, 32, 3)
  assert ours == {**{k: v for k, v in published.items() if k != "_diffusers_version"},
                  "dropout": 0.1}
  for model, size in ((config.model, 32), (dict(config.model, **bench.SMOKE_MODEL), 16)):
    model = type(config.model)(model)
    kwargs = convert_diffusers.unet_kwargs_from_config(bench.diffusers_config(model, size, 3))
    assert kwargs["ch"] == model.ch and kwargs["ch_mult"] == tuple(model.ch_mult)
    assert kwargs["attn_resolutions"] == tuple(model.attn_resolutions)
    assert kwargs["num_res_blocks"] == model.num_res_blocks
    assert kwargs["num_groups"] == model.num_groups and kwargs["dropout"] == model.dropout


@pytest.mark.slow
def test_smoke_run(tmp_path):
  """`--smoke` on the CPU: every kind of group (training, both samplers, both
  dtypes) with the JAX and PyTorch members (in the worker process, as on a
  GPU), JSON written."""
  pytest.importorskip("torch")
  pytest.importorskip("diffusers")
  out = tmp_path / "smoke.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, str(SCRIPT), "--smoke", "--groups", "train-bf16,ddpm-bf16,dpm-f32",
       "--repeats", "2", "--torch-process", "worker", "--out", str(out)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  assert "device: TFRT_CPU_0" in proc.stdout or "device: cpu" in proc.stdout.lower()
  assert "jax 0." in proc.stdout and "torch " in proc.stdout
  results = json.loads(out.read_text())
  assert results["env"]["mode"] == "smoke" and results["env"]["platform"] == "cpu"
  assert results["env"]["torch_process"] == "worker" and results["env"]["torch_device"] == "cpu"
  for group in ("train-bf16", "ddpm-bf16", "dpm-f32"):
    members = results["groups"][group]["members"]
    for name in ("jax", "torch eager", "torch.compile"):
      assert members[name]["throughput"] > 0, (group, name, members[name])
      assert members[name]["seconds_per_call"]["n"] == 2
    assert members["jax"]["memory"]["total_bytes"] > 0
    assert members["jax"]["model_flops_per_call"] > 0
    assert results["groups"][group]["ratios"]["vs_fastest_torch"] > 0
  cudnn = results["groups"]["train-bf16"]["members"]["jax cudnn-attention"]
  assert "not applicable" in cudnn["error"]
  assert len(results["goals"]) == 2
