"""Several processes: jax.distributed over 127.0.0.1 with gloo collectives.

Two local processes with 2 CPU devices each train the tiny digits config of
tests/_tiny.py, stop, resume, sample and evaluate, against one process with 4
devices on the same global batches (`pipeline.BatchSliceSampler`):
  * the parameters after the same steps agree to 1e-5;
  * the samples of `--mode=sample` are bitwise equal to a one-process
    `--mode=sample` of the same checkpoint;
  * `--mode=eval` reports one number, the same on both processes;
  * `metrics.jsonl`, config.json and the images are written once (process 0);
  * when one process dies, the other stops within the heartbeat timeout.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time

import numpy as np
import pytest

import _tiny

pytestmark = pytest.mark.slow

STEPS = {"train.log_every": 1, "train.checkpoint_every": 2, "train.keep_checkpoints": 3,
         "train.batch_size": 16, "eval.max_examples": 40, "eval.batch_size": 16,
         "sample.num_samples": 12, "sample.batch_size": 8, "sample.grid_size": 12,
         "distributed.heartbeat_timeout": 10}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, data_dir, cache_dir, overrides, *, processes: int, mode: str = "train"):
  """Starts `processes` CLI processes (2 devices each, or 4 for one process)."""
  port = _free_port()
  devices = 4 // processes
  procs = []
  for i in range(processes):
    extra = {} if processes == 1 else {
        "distributed.coordinator_address": f"127.0.0.1:{port}",
        "distributed.num_processes": processes, "distributed.process_id": i}
    args = _tiny.cli_args(str(workdir), data_dir, STEPS | overrides | extra, mode=mode)
    procs.append(_tiny.popen(args, _tiny.env(cache_dir, devices=devices)))
  return procs


def _run(*args, **kwargs) -> list[subprocess.CompletedProcess]:
  done = _tiny.wait_all(_launch(*args, **kwargs), timeout=600)
  for d in done:
    _tiny.check_ok(d)
  return done


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  data_dir, cache_dir = _tiny.session_dirs(tmp_path_factory)
  two = tmp_path_factory.mktemp("two_processes")
  one = tmp_path_factory.mktemp("one_process")
  # Two processes: 2 steps, stop; then resume to 4.
  first = _run(two, data_dir, cache_dir, {"train.num_steps": 2}, processes=2)
  second = _run(two, data_dir, cache_dir, {"train.num_steps": 4}, processes=2)
  # One process, 4 devices: 4 steps in one go.
  _run(one, data_dir, cache_dir, {"train.num_steps": 4}, processes=1)
  return data_dir, cache_dir, two, one, first, second


def test_two_processes_resume_and_match_one(runs):
  data_dir, _, two, one, first, second = runs
  assert _tiny.checkpoint_steps(two) == [2, 4]
  assert all("Resumed from the step-2 checkpoint" in d.stdout for d in second)
  config = _tiny.make_config(data_dir, STEPS | {"train.num_steps": 4})
  (a, _, _), (b, _, _) = _tiny.restore(config, two), _tiny.restore(config, one)
  for x, y in zip(*(map(np.asarray, __import__("jax").tree_util.tree_leaves(s.params))
                    for s in (a, b))):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_outputs_are_written_once(runs):
  _, _, two, _, _, _ = runs
  rows = [json.loads(line) for line in open(two / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert (two / "config.json").exists()
  assert sorted(p.name for p in two.glob("samples_step*.png")) == [
      "samples_step0000002.png", "samples_step0000004.png"]


def test_sample_across_processes_equals_one_process(runs):
  data_dir, cache_dir, two, _, _, _ = runs
  overrides = {"train.num_steps": 4}
  _run(two, data_dir, cache_dir, overrides, processes=2, mode="sample")
  with np.load(two / "samples.npz") as f:
    many = f["images"]
  (two / "samples.npz").rename(two / "samples_two.npz")
  _run(two, data_dir, cache_dir, overrides, processes=1, mode="sample")
  with np.load(two / "samples.npz") as f:
    single = f["images"]
  assert many.shape == (12, 8, 8, 1)
  np.testing.assert_array_equal(many, single)


def test_eval_is_one_global_number(runs):
  data_dir, cache_dir, two, _, _, _ = runs
  overrides = {"train.num_steps": 4}
  done = _run(two, data_dir, cache_dir, overrides, processes=2, mode="eval")
  found = [re.findall(r"test bits/dim: ([0-9.]+)", d.stdout) for d in done]
  assert found[0] and found[0] == found[1], [d.stdout[-500:] for d in done]
  single = _run(two, data_dir, cache_dir, overrides, processes=1, mode="eval")[0]
  one = float(re.findall(r"test bits/dim: ([0-9.]+)", single.stdout)[0])
  assert abs(float(found[0][0]) - one) < 1e-3 * one


def test_a_dead_process_stops_the_other(tmp_path, runs):
  data_dir, cache_dir, _, _, _, _ = runs
  procs = _launch(tmp_path / "dies", data_dir, cache_dir, {"train.num_steps": 100000},
                  processes=2)
  try:
    deadline = time.time() + 300
    while not (tmp_path / "dies" / "metrics.jsonl").exists() and time.time() < deadline:
      time.sleep(0.5)
    procs[1].kill()
    start = time.time()
    out, err = procs[0].communicate(timeout=120)
    waited = time.time() - start
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert procs[0].returncode != 0
  assert waited < 60, waited  # distributed.heartbeat_timeout = 10 s
  assert "another task died" in err, err[-3000:]


def test_fsdp_across_processes_matches_one_process(runs, tmp_path):
  """Parameters split over an fsdp axis of 4 devices spanning both processes
  (mesh 1 x 4) train like one process with 4 devices and plain data parallelism."""
  data_dir, cache_dir, _, one, _, _ = runs
  fsdp = tmp_path / "fsdp"
  _run(fsdp, data_dir, cache_dir, {"train.num_steps": 4, "mesh.fsdp": 4, "mesh.data": 1},
       processes=2)
  config = _tiny.make_config(data_dir, STEPS | {"train.num_steps": 4})
  (a, _, _), (b, _, _) = _tiny.restore(config, fsdp), _tiny.restore(config, one)
  import jax
  for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)
