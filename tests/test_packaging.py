"""Packaging: the wheel carries the package and its configs, installs into a
fresh virtualenv (non-editable) and runs from another directory, by name and
through the console script."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import sysconfig
import tomllib

import pytest

import _tiny

ROOT = _tiny.ROOT


def test_every_subpackage_is_listed_in_pyproject():
  listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
      "packages"])
  found = {".".join(p.parent.relative_to(ROOT).parts)
           for p in (ROOT / "diffusion_jax").rglob("__init__.py")}
  assert found | {"diffusion_jax.configs"} == listed


@pytest.mark.slow
def test_wheel_installs_and_runs_from_elsewhere(tmp_path, tmp_path_factory):
  data_dir, cache_dir = _tiny.session_dirs(tmp_path_factory)
  dist = tmp_path / "dist"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", "-w", str(dist), str(ROOT)], check=True, capture_output=True,
                 timeout=600)
  [wheel] = dist.glob("diffusion_jax-*.whl")
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
  py = venv / "bin" / "python"
  subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                 check=True, capture_output=True, timeout=600)
  # The dependencies come from this environment's site-packages (appended after
  # the new venv's own: its .pth files, e.g. an editable install, are not read).
  site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                        capture_output=True, text=True, check=True).stdout.strip()
  pathlib.Path(site, "_outer_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
  where = tmp_path / "elsewhere"
  where.mkdir()
  env = _tiny.env(cache_dir)
  env.pop("PYTHONPATH", None)
  check = subprocess.run([str(py), "-c", "import diffusion_jax, diffusion_jax.configs as c; "
                          "print(diffusion_jax.__file__, c.__file__)"], cwd=where, env=env,
                         capture_output=True, text=True, timeout=300)
  assert check.returncode == 0, check.stderr[-2000:]
  assert str(venv) in check.stdout and str(ROOT) not in check.stdout, check.stdout
  for command in ([str(venv / "bin" / "diffusion-jax")], [str(py), "-m", "diffusion_jax.main"]):
    proc = subprocess.run([*command, "--config=digits", "--mode=describe",
                           f"--config.data.data_dir={data_dir}"], cwd=where, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parameters: " in proc.stdout
