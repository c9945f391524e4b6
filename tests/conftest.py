"""Session fixtures shared by the test modules."""

import pytest

import _tiny


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A tfds data dir with the embedded digits prepared, one per session."""
  return _tiny.session_dirs(tmp_path_factory)[0]


@pytest.fixture(scope="session")
def v_teacher_dir(tmp_path_factory):
  """A tiny v-prediction teacher (`configs/digits_v.py` + tests/_tiny.py's
  TINY settings) trained for one step; the teacher of the distillation tests."""
  from diffusion_jax import train
  data_dir = _tiny.session_dirs(tmp_path_factory)[0]
  workdir = tmp_path_factory.mktemp("v_teacher")
  config = _tiny.make_config(data_dir, {"train.num_steps": 1, "train.log_every": 1},
                             path=_tiny.ROOT / "configs" / "digits_v.py")
  train.train_and_evaluate(config, str(workdir))
  return workdir
