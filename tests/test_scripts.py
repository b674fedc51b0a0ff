"""The real scripts and the real TensorBoard server, in subprocesses."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from tests import helpers


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("smoke")
  log = helpers.train(workdir)
  return workdir, log


def test_train_script_runs_and_reports_progress(smoke_run):
  workdir, log = smoke_run
  assert "20/20 100%" in log and "ex/s" in log and "ETA" in log
  assert "step 20: eval loss" in log
  assert (workdir / "checkpoints" / "20").is_dir()


def test_bad_override_exits_nonzero_with_one_line_naming_the_fix(tmp_path):
  done = helpers.run_script("train.py", "--config", "configs/mnist_mlp.py", "--workdir", str(tmp_path),
                            "--config.optimizer.lerning_rate=1", timeout=120)
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and "learning_rate" in lines[0] and "lerning_rate" in lines[0]
  assert not (tmp_path / "config.json").exists()  # failed before any work


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _get_json(url: str):
  with urllib.request.urlopen(url, timeout=5) as response:
    return json.loads(response.read())


def test_tensorboard_server_serves_the_logged_scalars(smoke_run):
  workdir, _ = smoke_run
  port = _free_port()
  server = subprocess.Popen(
      [sys.executable, "-m", "tensorboard.main", "--logdir", str(workdir), "--host", "127.0.0.1",
       "--port", str(port), "--load_fast", "false"],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
  base = f"http://127.0.0.1:{port}"
  try:
    deadline = time.time() + 90
    runs = {}
    while time.time() < deadline:
      try:
        runs = _get_json(f"{base}/data/plugin/scalars/tags")
        if "train/loss" in runs.get("tensorboard", {}):
          break
      except OSError:
        pass
      time.sleep(1)
    assert "tensorboard" in runs, f"server never listed the run: {runs}"
    expected = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
      row = json.loads(line)
      for tag in ("train/loss", "eval/accuracy"):
        if tag in row:
          expected.setdefault(tag, {})[row["step"]] = row[tag]
    for tag, values in expected.items():
      query = urllib.parse.urlencode({"run": "tensorboard", "tag": tag})
      served = _get_json(f"{base}/data/plugin/scalars/scalars?{query}")  # [[wall_time, step, value], ...]
      assert {step: pytest.approx(value, rel=1e-6) for _, step, value in served} == values
  finally:
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)
