"""WORKDIR/run.json: complete for a finished scripts/train.py run, and for a run that raised."""

import datetime
import json
import subprocess
from importlib import metadata

import pytest

from research import config as config_lib
from research import run_record
from research.registry import HOOKS
from research.train.hooks import FunctionHook
from research.train.loop import train
from tests import helpers

ERRORS_SEEN: list[str] = []


@HOOKS.register("test_fail")
def _fail(config):
  def fail(ctx):
    raise RuntimeError(f"injected failure at step {ctx.step}")

  return FunctionHook(fail, every=2)


@HOOKS.register("test_on_error")
def _on_error(config):
  return FunctionHook(lambda ctx: ERRORS_SEEN.append(type(ctx.error).__name__), on_error=True)


def _time(text: str) -> datetime.datetime:
  return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z")


def _check_environment(record: dict) -> None:
  top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=helpers.ROOT, capture_output=True, text=True,
                       check=False)
  if top.returncode == 0:  # a checkout: the commit and whether files differ from it
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=helpers.ROOT, capture_output=True, text=True,
                          check=True).stdout
    assert record["git"]["commit"] == head.strip() and isinstance(record["git"]["dirty"], bool)
  else:
    assert record["git"] is None
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tensorboardX", "datasets"):
    assert record["packages"][name] == metadata.version(name)
  assert record["devices"]["platform"] == "cpu" and record["hosts"]["process_count"] == 1
  assert _time(record["start_time"]) <= _time(record["end_time"])


def test_a_finished_run_records_its_command_code_and_outcome(tmp_path_factory):
  run = helpers.smoke_run(tmp_path_factory, "mnist_mlp")  # trained by scripts/train.py
  record = json.loads((run.workdir / run_record.FILE).read_text())
  assert record["command"][1].endswith("scripts/train.py")
  assert record["command"][2:] == ["--config", "configs/mnist_mlp.py:smoke", "--workdir", str(run.workdir)]
  assert record["devices"]["count"] == 8
  assert (record["status"], record["exit_code"], record["exception"]) == ("completed", 0, None)
  _check_environment(record)


def test_a_run_that_raised_records_the_exception(tmp_path):
  config = config_lib.load("configs/mnist_mlp.py:smoke")
  config.hooks.extra = ("test_fail", "test_on_error")
  ERRORS_SEEN.clear()
  with pytest.raises(RuntimeError, match="injected failure at step 2"):
    train(config, tmp_path)
  assert ERRORS_SEEN == ["RuntimeError"]  # the on_error hook saw it
  record = json.loads((tmp_path / run_record.FILE).read_text())
  assert record["status"] == "failed" and record["exit_code"] == 1
  assert record["exception"] == {"type": "RuntimeError", "message": "injected failure at step 2"}
  _check_environment(record)
  # Resuming rewrites it for the new invocation: a bounded one that stops is "stopped".
  config.hooks.extra = ()
  config.train.stop_after_steps = 4
  train(config, tmp_path)
  record = json.loads((tmp_path / run_record.FILE).read_text())
  assert (record["status"], record["exit_code"], record["exception"]) == ("stopped", 0, None)
