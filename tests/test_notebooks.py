"""The notebooks run top to bottom (smoke mode, DJ_SMOKE=1, CPU) with nbclient,
and their setup cell copes with Colab's layout (a clone named diffusion_jax
in the working directory, which shadows the package as a namespace package)."""

from __future__ import annotations

import os
import sys

import pytest

import _tiny

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
sys.path.insert(0, str(_tiny.ROOT / "notebooks"))
import run_all  # noqa: E402

NOTEBOOKS = run_all.NOTEBOOKS


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory):
  data_dir, cache_dir = _tiny.session_dirs(tmp_path_factory)
  env = _tiny.env(cache_dir)
  env.update({"DJ_SMOKE": "1", "TFDS_DATA_DIR": data_dir,
              "DJ_RUNS": str(tmp_path_factory.mktemp("notebook_runs"))})
  return env


def test_notebooks_are_stored_well():
  """Every notebook: valid, a setup cell with the install logic and the smoke
  switch first, and no error outputs stored."""
  assert sorted(NOTEBOOKS) == sorted(p.stem for p in (_tiny.ROOT / "notebooks").glob("*.ipynb"))
  for name in NOTEBOOKS:
    nb = nbformat.read(_tiny.ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    setup = next(c for c in nb.cells if c.cell_type == "code").source
    assert "DJ_SMOKE" in setup and "pip" in setup and "sys.path.insert(0, root)" in setup, name
    for cell in nb.cells:
      for out in cell.get("outputs", []):
        assert out.get("output_type") != "error", (name, cell.source[:80])


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, notebook_env):
  # The shared DJ_RUNS lets later notebooks reuse the tiny runs of earlier ones.
  seconds = run_all.execute(name, write=False, timeout=600, env=notebook_env)
  assert seconds < 600


def test_setup_cell_in_colab_layout(tmp_path, notebook_env):
  """cwd holds `diffusion_jax/`, the repository (no __init__.py at its top):
  a plain `import diffusion_jax` there is an empty namespace package; after
  the setup cell it is the real package (no pip needed: already installed)."""
  (tmp_path / "diffusion_jax").symlink_to(_tiny.ROOT, target_is_directory=True)
  setup = next(c for c in nbformat.read(_tiny.ROOT / "notebooks" / "quickstart.ipynb",
                                        as_version=4).cells if c.cell_type == "code").source
  probe = ("import sys, os\nsys.path.insert(0, os.getcwd())\nimport diffusion_jax as _d\n"
           "print('BEFORE', getattr(_d, '__file__', None))\n")
  nb = nbformat.v4.new_notebook(cells=[
      nbformat.v4.new_code_cell(probe), nbformat.v4.new_code_cell(setup),
      nbformat.v4.new_code_cell("import diffusion_jax as dj\nprint('AFTER', dj.__file__, "
                                "hasattr(dj, 'make_inpaint_fn'))")])
  saved = dict(os.environ)
  os.environ.update(notebook_env)
  try:
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
  finally:
    os.environ.clear()
    os.environ.update(saved)
  text = lambda cell: "".join(o.get("text", "") for o in cell.outputs)
  assert "BEFORE None" in text(nb.cells[0])            # the namespace package shadows it
  after = text(nb.cells[2])
  assert "AFTER" in after and after.strip().endswith("True"), after
  assert str(tmp_path / "diffusion_jax" / "diffusion_jax" / "__init__.py") in after or \
      str(_tiny.ROOT / "diffusion_jax" / "__init__.py") in after, after
