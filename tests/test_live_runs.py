"""A run that is being written: one writer per workdir, readers that never break it, signals at any moment."""

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import helpers

pytestmark = pytest.mark.slow

SMOKE = "configs/mnist_mlp.py:smoke"


def _start(workdir, *overrides):
  return subprocess.Popen(
      [sys.executable, str(helpers.ROOT / "scripts/train.py"), "--config", SMOKE, "--workdir", str(workdir),
       *overrides], cwd=helpers.ROOT, env=helpers.env_with_devices(8), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def _wait_for_steps(proc, workdir, steps: int, timeout: float = 120) -> None:
  """Until `steps` lines are logged (the runs here log every step)."""
  deadline, metrics = time.time() + timeout, workdir / "metrics.jsonl"
  while proc.poll() is None and time.time() < deadline:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= steps:
      return
    time.sleep(0.05)
  raise AssertionError(f"the run made no progress in {timeout}s (exit status {proc.poll()})")


def test_one_writer_per_workdir_and_readers_of_a_live_run_never_break_it(tmp_path):
  workdir = tmp_path / "run"
  # A checkpoint every 2 steps, only the newest kept: readers race the writer's deletions all along.
  writer = _start(workdir, "--config.train.steps=100000", "--config.checkpoint.every=2", "--config.checkpoint.keep=1",
                  "--config.train.eval_every=0", "--config.train.log_every=1", "--config.checkpoint.best_metric=")
  try:
    _wait_for_steps(writer, workdir, 4)
    with ThreadPoolExecutor() as pool:  # a second writer and two readers, all at once while the run goes on
      second, read, exported = pool.map(lambda args: helpers.run_script(*args), [
          ("train.py", "--config", SMOKE, "--workdir", str(workdir)),
          ("evaluate.py", "--workdir", str(workdir), "--json"),
          ("export.py", "--workdir", str(workdir), "--out", str(tmp_path / "export"), "--parity-batch-sizes", "1",
           "--accuracy-examples", "200")])
    assert second.returncode == 2, second.stderr[-2000:]
    assert len(second.stderr.strip().splitlines()) == 1
    assert f"in use by another run (pid {writer.pid} on " in second.stderr and "started" in second.stderr
    assert read.returncode == 0, read.stderr[-2000:]
    assert "unreadable" not in read.stderr and json.loads(read.stdout)["metrics"]["accuracy"] > 0.1
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert writer.poll() is None, "the run ended before its readers did: nothing was tested live"
  finally:
    writer.send_signal(signal.SIGTERM)
    _, err = writer.communicate(timeout=120)
  assert writer.returncode == 0 and "Stopped by SIGTERM" in err and "unreadable" not in err


@pytest.mark.parametrize("signals, delay", [((signal.SIGTERM,), 0.5), ((signal.SIGINT,), 3.0),
                                            ((signal.SIGTERM, signal.SIGINT), 6.0)])
def test_a_signal_at_any_moment_of_start_up_is_one_clean_stop(tmp_path, signals, delay):
  """Imports, data loading and compilation take a smoke run's first ~5 s; at 6 s it may have trained a step
  (then it saves it): either way one clean stop."""
  from research.data import sources

  for split in ("train", "test"):  # cached first: a signal during a first download is another matter
    sources.get_split("mnist", split)
  workdir = tmp_path / "run"
  proc = _start(workdir, "--config.train.steps=2000")  # still running at `delay`
  time.sleep(delay)
  for sig in signals:
    proc.send_signal(sig)
    time.sleep(0.2)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  # The stop names a signal that was sent: the first, unless both arrived while the main thread was inside one C
  # call (a compilation), when Python runs their handlers in signal-number order (SIGINT before SIGTERM).
  last = err.strip().splitlines()[-1]
  assert "Traceback" not in err and last.startswith(tuple(f"Stopped by {s.name} " for s in signals)), err


def test_signals_after_a_signalled_stop_has_saved_do_not_change_its_clean_exit(tmp_path):
  """Once the stop has saved and said so, the process is exiting: Ctrl-C pressed again and again then (after the
  training loop's handlers are gone) must not turn the clean stop into a death by SIGINT."""
  proc = _start(tmp_path / "run", "--config.train.steps=100000", "--config.train.log_every=1")
  _wait_for_steps(proc, tmp_path / "run", 2)
  proc.send_signal(signal.SIGTERM)
  lines = []
  for line in proc.stderr:  # the progress bar's lines, then the stop's
    lines.append(line)
    if line.startswith("Stopped by SIGTERM"):
      break
  while proc.poll() is None:
    proc.send_signal(signal.SIGINT)
    time.sleep(0.005)
  assert proc.returncode == 0, "".join(lines[-5:]) + proc.stderr.read()[-2000:]


def test_a_second_ctrl_c_during_saves_leaves_the_last_checkpoint_intact(tmp_path, capsys):
  workdir = tmp_path / "run"
  proc = _start(workdir, "--config.train.steps=100000", "--config.checkpoint.every=1", "--config.train.log_every=1",
                "--config.train.eval_every=0", "--config.checkpoint.best_metric=")
  _wait_for_steps(proc, workdir, 3)
  proc.send_signal(signal.SIGINT)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode in (0, 130) and "Traceback" not in err, err[-2000:]
  if proc.returncode == 130:
    assert err.strip().splitlines()[-1] == "error: interrupted; checkpoints already written are intact."
  helpers.train_here(workdir, "--config.train.steps=12", "--config.checkpoint.best_metric=")  # (in this process)
  resumed = capsys.readouterr().err
  assert "Resuming from step" in resumed and "unreadable" not in resumed


def test_a_signal_that_cancels_a_download_is_the_stop_not_missing_data(tmp_path, capsys):
  """pyarrow cancels a download under way on SIGTERM (a first run's MNIST): the run stops cleanly, and the same
  failure without a signal is still the data error."""
  import os

  from research import config as config_lib
  from research.data.sources import DATASETS
  from research.errors import DataUnavailableError
  from research.train.loop import train
  from research.train.preemption import PreemptionGuard

  def cancelled(split):
    os.kill(os.getpid(), signal.SIGTERM)  # caught by the guard; then the download fails as pyarrow's does
    raise DataUnavailableError(f"Dataset 'cancelled' ({split}) could not be loaded from any source. Tried: ...")

  DATASETS.register("cancelled_download")(cancelled)
  config = config_lib.apply_overrides(config_lib.load(SMOKE), ["--config.data.name=cancelled_download"])
  with PreemptionGuard() as guard:
    assert train(config, tmp_path / "run", preemption=guard) == {}
  assert capsys.readouterr().err.strip().splitlines()[-1].startswith("Stopped by SIGTERM while loading data;")
  assert json.loads((tmp_path / "run/run.json").read_text())["status"] == "stopped"
  DATASETS.register("unavailable")(lambda split: (_ for _ in ()).throw(DataUnavailableError("no source")))
  config.data.name = "unavailable"
  with PreemptionGuard() as guard, pytest.raises(DataUnavailableError, match="no source"):
    train(config, tmp_path / "run2", preemption=guard)
