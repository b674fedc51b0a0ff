"""The real scripts and the real TensorBoard server, in subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from tests import helpers


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  run = helpers.smoke_run(tmp_path_factory, "mnist_mlp")
  return run.workdir, run.log


def test_train_script_runs_and_reports_progress(smoke_run):
  workdir, log = smoke_run
  assert "20/20 100%" in log and "ex/s" in log and "ETA" in log
  assert "step 20: eval loss" in log
  assert (workdir / "checkpoints" / "20").is_dir()
  assert "WARNING" not in log and "absl" not in log  # other libraries' warnings go to WORKDIR/logs/warnings.log


def test_bad_override_exits_nonzero_with_one_line_naming_the_fix(tmp_path):
  done = helpers.run_script("train.py", "--config", "configs/mnist_mlp.py", "--workdir", str(tmp_path),
                            "--config.optimizer.lerning_rate=1", timeout=120)
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and "learning_rate" in lines[0] and "lerning_rate" in lines[0]
  assert not (tmp_path / "config.json").exists()  # failed before any work


def _get_json(url: str):
  with urllib.request.urlopen(url, timeout=5) as response:
    return json.loads(response.read())


def test_tensorboard_server_serves_the_logged_scalars(smoke_run):
  workdir, _ = smoke_run
  port = helpers.free_port()
  server = subprocess.Popen(
      [sys.executable, "-m", "tensorboard.main", "--logdir", str(workdir), "--host", "127.0.0.1",
       "--port", str(port), "--load_fast", "false"],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
      env=helpers.env_without_tensorflow())
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
      time.sleep(0.2)
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


# Every flag of each script, as its --help must describe it.
FLAGS = {
    "train.py": ["--config", "--workdir", "--coordinator_address", "--num_processes", "--process_id", "--init_timeout_s",
                 "--heartbeat_timeout_s", "--compile_only", "--devices", "--accelerator", "--verbose"],
    "evaluate.py": ["--workdir", "--step", "--split", "--json", "--verbose"],
    "export.py": ["--workdir", "--step", "--format", "--out", "--parity-batch-sizes", "--tolerance",
                  "--max-accuracy-drop", "--accuracy-examples", "--tflite-batch", "--verify", "--verbose"],
}
# Runs a script with --help in this interpreter and reports whether JAX got imported.
_HELP = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
  runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as e:
  print("exit", e.code)
print("jax imported:", "jax" in sys.modules)
"""


def _parsers():
  from research import cli
  from research.export import cli as export_cli

  return {"train.py": cli.train_parser(), "evaluate.py": cli.evaluate_parser(), "export.py": export_cli.parser()}


@pytest.mark.parametrize("script", sorted(FLAGS))
def test_help_describes_every_flag_without_importing_jax(script):
  done = subprocess.run([sys.executable, "-c", _HELP, str(helpers.ROOT / "scripts" / script)], cwd=helpers.ROOT,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.rstrip().endswith("exit 0\njax imported: False"), done.stdout[-500:]
  for flag in FLAGS[script]:
    assert flag in done.stdout, flag
  options = {o for action in _parsers()[script]._actions for o in action.option_strings}
  assert options == set(FLAGS[script]) | {"-h", "--help"}  # no flag left out of FLAGS
  assert all(action.help for action in _parsers()[script]._actions), script


def test_train_help_lists_the_configs_and_explains_overrides():
  done = helpers.run_script("train.py", "--help", timeout=60)
  assert done.returncode == 0 and not done.stderr
  for config in sorted((helpers.ROOT / "configs").glob("*.py")):
    line = next((l for l in done.stdout.splitlines() if l.strip().startswith(f"{config.stem}[:smoke]")), None)
    assert line is not None, config.stem
  assert "MLP 784-512-256-10 on real MNIST" in done.stdout  # the first line of the config's docstring
  assert "--config.KEY=VALUE" in done.stdout and "--config.optimizer.learning_rate=" in done.stdout
  assert "research/config.py:defaults()" in done.stdout and "docs/configs.md" in done.stdout


@pytest.mark.parametrize("script, args", [("train.py", ["--config", "configs/mnist_mlp.py"]),
                                          ("evaluate.py", ["--workdir", "x", "--step"]),
                                          ("export.py", ["--workdir", "x", "--tolerance", "tight"])])
def test_argparse_errors_are_one_line(script, args, tmp_path):
  done = helpers.run_script(script, *args, timeout=120)
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
  assert "see --help" in lines[0]
