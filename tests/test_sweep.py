"""scripts/sweep.py: plans, one-line errors, a sweep interrupted and resumed, its runs in TensorBoard's HParams API."""

import json
import signal
import subprocess
import sys
import time

import pytest

from research import runs
from research.errors import ConfigError
from research.sweep import plan
from tests import helpers
from tests import tensorboard_server as tb


def test_grid_values_split_outside_brackets_and_every_combination_runs():
  assert plan.split_values("(512,256),(256,), 'a,b'") == ["(512,256)", "(256,)", "'a,b'"]
  made = plan.make(["optimizer.learning_rate=1e-3,3e-3", "model.hidden_sizes=(512,256),(256,)"], [])
  assert [r.name for r in made] == ["00-learning_rate=1e-3,hidden_sizes=512x256", "01-learning_rate=1e-3,hidden_sizes=256",
                                    "02-learning_rate=3e-3,hidden_sizes=512x256", "03-learning_rate=3e-3,hidden_sizes=256"]
  assert made[1].overrides == ("--config.optimizer.learning_rate=1e-3", "--config.model.hidden_sizes=(256,)")


def test_random_draws_are_seeded_and_within_their_ranges():
  samples = ["optimizer.learning_rate=loguniform(1e-4,1e-2)", "data.batch_size=randint(32,64)",
             "model.activation=choice(relu,gelu)"]
  made = plan.make(["seed=0,1"], samples, random=5, seed=3)
  assert len(made) == 10 and made == plan.make(["seed=0,1"], samples, random=5, seed=3)
  assert made != plan.make(["seed=0,1"], samples, random=5, seed=4)
  for run in made:
    values = dict(o[len("--config."):].split("=", 1) for o in run.overrides)
    assert 1e-4 <= float(values["optimizer.learning_rate"]) <= 1e-2
    assert 32 <= int(values["data.batch_size"]) <= 64 and values["model.activation"] in ("relu", "gelu")


@pytest.mark.parametrize("grid, samples, random, message", [
    (["optimizer.learning_rate"], [], 0, "write it as --grid"),
    (["optimizer.learning_rate=1e-3,,2e-3"], [], 0, "empty value"),
    (["seed=1,2", "seed=3"], [], 0, "swept twice"),
    ([], ["optimizer.learning_rate=normal(0,1)"], 2, "must be one of uniform"),
    ([], ["optimizer.learning_rate=loguniform(0,1)"], 2, "both > 0"),
    ([], ["seed=randint(5,1)"], 2, "two integers low < high"),
    ([], ["seed=randint(1,5)"], 0, "needs --random N"),
    ([], [], 0, "Nothing to sweep"),
])
def test_bad_specs_are_one_line_errors(grid, samples, random, message):
  with pytest.raises(ConfigError, match=message) as error:
    plan.make(grid, samples, random)
  assert "\n" not in str(error.value)


def test_a_bad_key_stops_the_sweep_before_anything_starts(tmp_path):
  done = helpers.run_script("sweep.py", "--config", "configs/mnist_mlp.py:smoke", "--out", str(tmp_path / "sweep"),
                            "--grid", "optimizer.lerning_rate=1e-3,3e-3", timeout=60)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [
      "error: Unknown config key 'optimizer.lerning_rate'. Did you mean 'optimizer.learning_rate'?"]
  assert not (tmp_path / "sweep").exists()


def _sweep_command(out) -> list[str]:
  return [sys.executable, str(helpers.ROOT / "scripts/sweep.py"), "--config", "configs/mnist_mlp.py:smoke",
          "--out", str(out), "--grid", "optimizer.learning_rate=1e-3,3e-3", "--config.checkpoint.every=5"]


def _wait_for(path, process, timeout=240) -> None:
  deadline = time.time() + timeout
  while not path.exists():
    assert process.poll() is None, f"the sweep ended before {path} appeared: {process.communicate()}"
    assert time.time() < deadline, f"{path} never appeared"
    time.sleep(0.05)


def test_an_interrupted_sweep_resumes_and_tensorboard_lists_its_runs(tmp_path):
  out = tmp_path / "sweep"
  first, second = out / "00-learning_rate=1e-3", out / "01-learning_rate=3e-3"
  sweep = subprocess.Popen(_sweep_command(out), cwd=helpers.ROOT, env=helpers.env_with_devices(1), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  _wait_for(first / "metrics.jsonl", sweep)  # the first run is training (its metric writer is open)
  sweep.send_signal(signal.SIGTERM)
  stdout, stderr = sweep.communicate(timeout=120)
  assert sweep.returncode == 130, stderr
  assert "Rerun the same command to resume the sweep" in stdout
  stopped_at = runs.checkpoint_steps(first)
  assert stopped_at and stopped_at[-1] < 20 and not runs.read(first).finished  # a checkpoint of the stop
  assert not second.exists()  # never started
  assert [r["name"] for r in json.loads((out / "sweep.json").read_text())["runs"]] == [first.name, second.name]

  resumed = helpers.run_script("sweep.py", *_sweep_command(out)[2:], "--parallel", "2", devices=1, timeout=300)
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert f"Resuming from step {stopped_at[-1]}" in (first / "train.log").read_text()
  assert all(runs.read(r).finished for r in (first, second))
  again = helpers.run_script("sweep.py", *_sweep_command(out)[2:], devices=1, timeout=120)
  assert again.returncode == 0 and again.stdout.count("finished, skipped") == 2, again.stdout

  with tb.serve(out) as base:
    groups = tb.session_groups(base, expected=2)
  assert sorted(g["hparams"]["optimizer.learning_rate"] for g in groups) == [1e-3, 3e-3]
  for group in groups:
    run = runs.read(out / group["name"].removesuffix("/tensorboard"))
    assert group["sessions"][0]["status"] == "STATUS_SUCCESS"
    assert tb.metric_values(group)["eval/accuracy"] == pytest.approx(run.final["eval/accuracy"], rel=1e-6)
