"""Checkpoints that survive anything: real processes killed, signalled, starved of disk, fed NaNs."""

import json
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from research import config as config_lib
from research.checkpoint import Checkpointer, key_name
from research.train import loop
from research.train import experiment
from tests import helpers

pytestmark = pytest.mark.slow

FAST = ("--config.train.log_every=1", "--config.checkpoint.every=5", "--config.train.eval_every=0")


def _start(workdir, *overrides, config="configs/mnist_mlp.py:smoke", preexec_fn=None):
  return subprocess.Popen(
      [sys.executable, str(helpers.ROOT / "scripts/train.py"), "--config", config, "--workdir", str(workdir),
       *overrides], cwd=helpers.ROOT, env=helpers.env_with_devices(8), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)


def _logged_step(workdir) -> int:
  try:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)
  except (OSError, ValueError):
    return 0


def _wait_for_step(proc, workdir, step: int, timeout: float = 120) -> None:
  deadline = time.time() + timeout
  while _logged_step(workdir) < step and proc.poll() is None:
    if time.time() > deadline:
      proc.kill()
      raise AssertionError(f"no progress to step {step} in {timeout}s")
    time.sleep(0.005)


def _assert_same_params(a, b, step):
  pa, pb = helpers.checkpoint_params(a, step), helpers.checkpoint_params(b, step)
  assert pa.keys() == pb.keys()
  for key in pa:
    assert np.array_equal(pa[key], pb[key]), key


def test_sigkill_at_random_points_then_resume_is_bitwise_identical(tmp_path):
  overrides = (*FAST, "--config.train.steps=60")
  helpers.train_here(tmp_path / "straight", *overrides)
  workdir = tmp_path / "killed"
  rng = random.Random(1234)
  kill_points = sorted(rng.sample(range(2, 58), 3))  # [9, 30, 51]: 30 (+27 ms) lands in the save of step 30
  for point in kill_points:
    proc = _start(workdir, *overrides)
    _wait_for_step(proc, workdir, point)
    time.sleep(rng.uniform(0, 0.03))  # Land anywhere: mid-step, mid-save, mid-log.
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"run ended before the kill at step {point}: {err[-2000:]}"
  helpers.train_here(workdir, *overrides)
  _assert_same_params(tmp_path / "straight", workdir, 60)
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "train/loss" in r] == list(range(1, 61))  # Nothing lost or logged twice.


def test_sigterm_saves_exits_zero_and_resumes_exactly(tmp_path, capsys):
  constant = ("--config.schedule.name=constant", *FAST)
  proc = _start(tmp_path / "run", *constant, "--config.train.steps=100000")
  _wait_for_step(proc, tmp_path / "run", 25)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("Stopped by SIGTERM after step ") and "Rerun the same command" in last
  reached = int(last.split("after step ")[1].split(";")[0])
  assert reached >= 25 and (tmp_path / "run/checkpoints" / str(reached)).is_dir()
  # Resuming (to a few steps further) matches a straight run to the same step, bit for bit.
  target = f"--config.train.steps={reached + 7}"
  helpers.train_here(tmp_path / "run", *constant, target)  # (in this process: its messages go to capsys)
  assert f"Resuming from step {reached}" in capsys.readouterr().err
  helpers.train_here(tmp_path / "straight", *constant, target)
  _assert_same_params(tmp_path / "straight", tmp_path / "run", reached + 7)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A 20-step smoke run with checkpoints at 10 and 20 (shared: tests copy it before changing it)."""
  return helpers.smoke_run(tmp_path_factory, "mnist_mlp").workdir


def _data_file(checkpoint_dir):
  return max((checkpoint_dir / "state").rglob("ocdbt.process_0/d/*"), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["truncate", "delete", "bad_metadata"])
def test_unreadable_latest_checkpoint_falls_back_to_the_previous(finished_run, tmp_path, damage):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  latest = workdir / "checkpoints/20"
  if damage == "truncate":
    data = _data_file(latest)
    data.write_bytes(data.read_bytes()[:1000])
  elif damage == "delete":
    (latest / "state/manifest.ocdbt").unlink()
  else:
    (latest / "meta/metadata").write_text("{not json")
  log = helpers.train(workdir)
  assert "checkpoint at step 20" in log and "unreadable" in log
  assert "Traceback" not in log  # Orbax's, TensorStore's and asyncio's go to WORKDIR/logs/warnings.log
  assert "Resuming from step 10" in log and "moved the unreadable checkpoint of step 20" in log
  assert len(list((workdir / "checkpoints").glob("20.unreadable-*"))) == 1  # set aside, not deleted
  _assert_same_params(finished_run, workdir, 20)  # retrained from 10: the same result


def test_no_readable_checkpoint_stops_with_the_list_of_what_was_tried(finished_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  for step in (10, 20):
    (workdir / f"checkpoints/{step}/meta/metadata").write_text("{not json")
  done = helpers.run_script("train.py", "--config", "configs/mnist_mlp.py:smoke", "--workdir", str(workdir))
  assert done.returncode == 1
  assert "No readable checkpoint" in done.stderr and "step 20:" in done.stderr and "step 10:" in done.stderr


def test_a_checkpoint_in_an_older_format_is_named_as_such(finished_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  for step in (10, 20):
    meta = workdir / f"checkpoints/{step}/meta/metadata"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format_version": 1}))
  done = helpers.run_script("train.py", "--config", "configs/mnist_mlp.py:smoke", "--workdir", str(workdir))
  assert done.returncode == 1
  message = done.stderr.split("Tried:")[-1]
  assert "step 20: ValueError: written in checkpoint format 1" in message and "reads format 2" in message


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nan_guard(tmp_path, policy):
  # A sane rate for 7 steps (checkpoint at 5), then 1e30 from step 8: the loss of step 9 overflows.
  diverge = ("--config.optimizer.name=sgd", "--config.optimizer.learning_rate=0.01", "--config.schedule.name=step",
             "--config.schedule.boundaries=(7,)", "--config.schedule.factor=1e32", f"--config.nan_policy={policy}",
             *FAST)
  done = helpers.run_script("train.py", "--config", "configs/mnist_mlp.py:smoke", "--workdir", str(tmp_path),
                            *diverge)
  if policy == "stop":
    assert done.returncode == 1
    message = done.stderr.strip().splitlines()[-1]
    assert "non-finite train step 9" in message and "loss=" in message
  else:
    assert done.returncode == 0, done.stderr[-2000:]
    assert "update skipped" in done.stderr
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("train/skipped_steps", 0) for r in rows) > 0
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == ([5] if policy == "stop" else [10, 15, 20])
  for step in steps:
    for key, value in helpers.checkpoint_params(tmp_path, step).items():
      assert np.isfinite(value).all(), f"NaN in checkpoint {step}: {key}"


RESTORE = """
import sys, json, numpy as np, jax
from research.checkpoint import key_name
from research.train import experiment
config, graphdef, state, meta = experiment.restore(sys.argv[1])
leaves = jax.tree_util.tree_flatten_with_path(state.params)[0]
np.savez(sys.argv[2], **{"/".join(key_name(k) for k in p): np.asarray(v) for p, v in leaves})
print(json.dumps({"devices": jax.device_count(), "step": meta["step"],
                  "shards": len(leaves[0][1].sharding.device_set)}))
"""


@pytest.mark.parametrize("devices", [1, 4])
def test_checkpoint_saved_on_8_devices_restores_on_fewer(finished_run, tmp_path, devices):
  out = tmp_path / "params.npz"
  done = subprocess.run([sys.executable, "-c", RESTORE, str(finished_run), str(out)], cwd=helpers.ROOT,
                        env=helpers.env_with_devices(devices), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  info = json.loads(done.stdout.strip().splitlines()[-1])
  assert info == {"devices": devices, "step": 20, "shards": devices}
  restored = np.load(out)
  saved = helpers.checkpoint_params(finished_run, 20)
  assert len(restored.files) == len(saved)
  for key, value in saved.items():
    assert np.array_equal(restored[key], value), key


def test_evaluate_script_reproduces_the_logged_accuracy(finished_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)  # evaluate.py writes WORKDIR/eval
  done = helpers.run_script("evaluate.py", "--workdir", str(workdir), "--step", "10")
  assert done.returncode == 0, done.stderr[-2000:]
  written = json.loads((workdir / "eval" / "test_10.json").read_text())
  logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  at_10 = next(r for r in logged if r["step"] == 10 and "eval/accuracy" in r)
  assert written["step"] == 10 and written["split"] == "test"
  assert written["metrics"]["accuracy"] == at_10["eval/accuracy"]
  assert written["metrics"]["loss"] == pytest.approx(at_10["eval/loss"], rel=1e-6)
  bad = helpers.run_script("evaluate.py", "--workdir", str(workdir), "--step", "7")
  assert bad.returncode == 2 and "No checkpoint at step 7" in bad.stderr and "[10, 20]" in bad.stderr


def test_early_stopping_keeps_and_marks_the_best_step(tmp_path, capsys):
  # Ranking by *maximum* loss: the first evaluation is best and never beaten, so patience runs out.
  workdir = tmp_path / "run"
  overrides = ("--config.train.steps=100", "--config.train.eval_every=2", "--config.train.early_stopping_patience=3",
               "--config.checkpoint.best_metric=loss", "--config.checkpoint.best_mode=max",
               "--config.checkpoint.keep=1", "--config.checkpoint.every=0")
  helpers.train_here(workdir, *overrides)  # in this process: its progress lines are captured from sys.stderr
  log = capsys.readouterr().err
  assert "Early stopping at step 8" in log and "best is step 2" in log
  best = json.loads((workdir / "checkpoints/best.json").read_text())
  assert best["step"] == 2 and best["metric"] == "loss"
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 8]
  helpers.train_here(workdir, *overrides)
  assert "Already trained to step 8" in capsys.readouterr().err  # an early-stopped run stays stopped
  done = helpers.run_script("evaluate.py", "--workdir", str(workdir), "--step", "best", "--json")
  assert json.loads(done.stdout)["step"] == 2


def test_init_from_restores_only_the_parameters(finished_run, tmp_path):
  config = config_lib.load("configs/mnist_mlp.py:smoke")
  config.optimizer.name = "sgd"  # a different optimizer: its state cannot come from the source run
  config.init_from = f"{finished_run}:10"
  mesh = loop.parallel.make_mesh(config)
  arrays = experiment.load_split(config, "train")
  _, state, _, _ = experiment.build_state(config, experiment.build_model(config, arrays, experiment.preprocessor(config, finished_run)), 20, mesh)
  state, step = loop._init_from(config.init_from, state, config)
  assert step == 10 and int(state.step) == 0
  saved = helpers.checkpoint_params(finished_run, 10)
  for path, leaf in loop.jax.tree_util.tree_flatten_with_path(state.params)[0]:
    key = "/".join(key_name(k) for k in path)
    assert np.array_equal(np.asarray(leaf), saved[key]), key


def test_unwritable_workdir_and_a_full_disk_fail_clearly_and_keep_old_checkpoints(tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  done = helpers.run_script("train.py", "--config", "configs/mnist_mlp.py:smoke", "--workdir", str(blocker / "run"))
  assert done.returncode == 1 and f"Cannot write to workdir {blocker / 'run'}" in done.stderr

  workdir = tmp_path / "run"
  helpers.train_here(workdir, "--config.train.stop_after_steps=10")

  def small_disk():  # Files may not grow past 200 kB: the next checkpoint (~5 MB) cannot be written.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

  proc = _start(workdir, preexec_fn=small_disk)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 1
  message = err.strip().splitlines()[-1]
  assert str(workdir / "checkpoints") in message and "File too large" in message and "intact" in message
  helpers.train_here(workdir)
  assert "Resuming from step 10" in capsys.readouterr().err  # the old checkpoint still restores


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_an_update_that_overflows_the_parameters_never_reaches_a_checkpoint(tmp_path, policy):
  # Step 1's loss and gradient are finite; Adam's step of learning_rate=1e39 makes every parameter non-finite.
  done = helpers.run_script("train.py", "--config", "configs/mnist_mlp.py:smoke", "--workdir", str(tmp_path),
                            "--config.optimizer.learning_rate=1e39", "--config.schedule.name=constant",
                            "--config.checkpoint.every=1", "--config.train.steps=4", "--config.train.eval_every=0",
                            f"--config.nan_policy={policy}")
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  if policy == "stop":
    assert done.returncode == 1 and steps == []
    assert "non-finite train step 1" in done.stderr and "overflowed the parameters" in done.stderr
  else:
    assert done.returncode == 0, done.stderr[-2000:]
    assert steps == [2, 3, 4]  # every step skipped, each one saved (keep=3)
  for step in steps:
    arrays = helpers.checkpoint_arrays(tmp_path, step)
    assert any(k.startswith("opt_state/") for k in arrays)
    for key, value in arrays.items():
      assert np.isfinite(value).all(), f"non-finite value in checkpoint {step}: {key}"


def test_bit_rot_in_array_data_is_caught_and_the_run_falls_back_to_an_identical_end(finished_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  data = _data_file(workdir / "checkpoints/20")
  damaged = bytearray(data.read_bytes())
  for i in range(len(damaged) // 2, len(damaged) // 2 + 8):  # a few flipped bits in the middle of array data
    damaged[i] ^= 0x04
  data.write_bytes(bytes(damaged))
  log = helpers.train(workdir)
  assert "does not match its checksum" in log and "checkpoint at step 20" in log and "Resuming from step 10" in log
  assert "Traceback" not in log
  _assert_same_params(finished_run, workdir, 20)


def test_a_changed_config_on_resume_is_named_and_overwrites_nothing(finished_run, tmp_path, capsys):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  saved_config = (workdir / "config.json").read_bytes()
  wider = helpers.run_script("train.py", "--config", "configs/mnist_mlp.py:smoke", "--workdir", str(workdir),
                             "--config.model.hidden_sizes=(64,)")
  assert wider.returncode == 2 and len(wider.stderr.strip().splitlines()) == 1, wider.stderr[-2000:]
  assert "model.hidden_sizes" in wider.stderr and "init_from" in wider.stderr and "new --workdir" in wider.stderr
  assert (workdir / "config.json").read_bytes() == saved_config  # evaluation and export of the run still work

  helpers.train_here(workdir, "--config.optimizer.learning_rate=0.002", "--config.train.steps=25")
  log = capsys.readouterr().err
  assert "optimizer.learning_rate 0.001 -> 0.002" in log and "Resuming from step 20" in log
  assert json.loads((workdir / "config.json").read_text())["optimizer"]["learning_rate"] == 0.002
  history = [json.loads(line) for line in (workdir / "config_history.jsonl").read_text().splitlines()]
  assert history == [{"step": 20, "time": history[0]["time"],
                      "changes": {"optimizer.learning_rate": [0.001, 0.002], "train.steps": [20, 25]}}]
  helpers.train_here(workdir, "--config.optimizer.learning_rate=0.002", "--config.train.steps=25")
  again = capsys.readouterr().err
  assert "the config was changed on resuming at step 20: optimizer.learning_rate, train.steps" in again


def test_a_step_directory_replaced_by_a_file_is_refused_not_retrained(finished_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  shutil.rmtree(workdir / "checkpoints/20")
  (workdir / "checkpoints/20").write_text("not a checkpoint")
  metrics = (workdir / "metrics.jsonl").read_bytes()
  done = helpers.run_script("train.py", "--config", "configs/mnist_mlp.py:smoke", "--workdir", str(workdir))
  assert done.returncode == 1 and "20 (a file)" in done.stderr and "not a checkpoint" in done.stderr
  assert len(done.stderr.strip().splitlines()) == 1, done.stderr
  assert (workdir / "metrics.jsonl").read_bytes() == metrics and (workdir / "checkpoints/10").is_dir()


@pytest.mark.parametrize("limit", [100, 1500])
def test_a_disk_full_from_the_start_is_one_line_naming_the_file(tmp_path, limit):
  """Files may not grow past `limit` bytes: the run's records (100) or its metrics and events (1500) fail."""
  def full_disk():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

  from research.data import sources

  for split in ("train", "test"):  # in the session's data cache before the disk is "full"
    sources.get_split("mnist", split)
  proc = _start(tmp_path / "run", "--config.train.steps=4", preexec_fn=full_disk)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
  line = err.strip().splitlines()[-1]
  assert line.startswith("error: ") and str(tmp_path / "run") in line and "File too large" in line, line


def test_a_reader_lists_the_checkpoints_again_when_the_run_deletes_one_meanwhile(finished_run, tmp_path, monkeypatch):
  """A live run's keep policy may delete a step between a reader listing its directory and reading its commit
  time (seen in evaluate.py on a live run): here the step is deleted at exactly that moment, inside Orbax's read."""
  from orbax.checkpoint._src.path import step as orbax_step

  from research.checkpoint import Checkpointer

  workdir = shutil.copytree(finished_run, tmp_path / "run")
  directory = workdir / "checkpoints"

  def deleted_while_listed(metadata):
    if metadata.step == 10:
      shutil.rmtree(directory / "10")  # what the writer's checkpoint.keep does; Orbax then stats the directory
    return None

  monkeypatch.setattr(orbax_step.Metadata, "commit_timestamp_nsecs", property(deleted_while_listed))
  assert Checkpointer(directory, every=0, keep=0, read_only=True).steps() == [20]
  assert not (directory / "10").exists()


def test_a_save_in_one_process_lowers_no_program_and_restores_exactly(tmp_path):
  """Orbax's replica-parallel saving would slice each replicated array into one piece per device, lowering and
  compiling a program per new slice shape; in one process each array is written whole, and the checkpoint names
  orbax's own handler, as every checkpoint written before did."""
  replicated = jax.NamedSharding(jax.make_mesh((8,), ("data",)), jax.P())
  state = {"w": np.arange(96 * 40, dtype=np.float32).reshape(96, 40), "b": np.linspace(-1, 1, 37, dtype=np.float32)}
  on_devices = {k: jax.device_put(v, replicated) for k, v in state.items()}
  lowered = []
  listener = lambda event, seconds, **kwargs: lowered.append(event) if "jaxpr_to_mlir_module" in event else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    checkpointer = Checkpointer(tmp_path, every=1, keep=2)
    assert checkpointer.save(1, on_devices, {"epoch": 0, "index": 0})
    checkpointer.wait()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert lowered == []
  metadata = json.loads((tmp_path / "1" / "_CHECKPOINT_METADATA").read_text())
  assert metadata["item_handlers"]["state"].endswith("standard_checkpoint_handler.StandardCheckpointHandler")
  restored = checkpointer.manager.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore(
      {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=replicated) for k, v in state.items()})))["state"]
  for key, value in state.items():
    assert np.array_equal(restored[key], value), key
  checkpointer.close()
