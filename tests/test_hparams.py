"""research/hparams.py: a run's config and metrics, read back through the real TensorBoard server's HParams API."""

import json
import shutil

import pytest

from research import hparams, runs
from tests import helpers
from tests import tensorboard_server as tb


def test_flatten_gives_hparams_values_a_table_can_show():
  flat = hparams.flatten({"model": {"hidden_sizes": [512, 256], "name": "mlp", "dropout": 0.1},
                          "train": {"steps": 20, "profile": False}, "init_from": None})
  assert flat == {"model.hidden_sizes": "[512, 256]", "model.name": "mlp", "model.dropout": 0.1,
                  "train.steps": 20.0, "train.profile": False, "init_from": "null"}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
  """The shared finished smoke run, and one stopped at step 10 of 20 (train.stop_after_steps), side by side."""
  root = tmp_path_factory.mktemp("hparams")
  shutil.copytree(helpers.smoke_run(tmp_path_factory, "mnist_mlp").workdir, root / "finished")
  stopped = helpers.shared_run(tmp_path_factory, "configs/mnist_mlp.py:smoke", "--config.train.stop_after_steps=10")
  shutil.copytree(stopped.workdir, root / "stopped")
  return root


def test_record_run_is_idempotent(two_runs, tmp_path):
  workdir = shutil.copytree(two_runs / "finished", tmp_path / "run")
  first = hparams.record_run(workdir).read_bytes()
  files = sorted(p.name for p in (workdir / "tensorboard").iterdir())
  hparams.record_run(workdir)
  assert sorted(p.name for p in (workdir / "tensorboard").iterdir()) == files  # replaced, not added
  assert len(hparams.record_run(workdir).read_bytes()) == len(first)
  assert not list(workdir.glob(".*.tmp"))


def test_tensorboard_hparams_api_lists_each_run_with_its_config_and_metrics(two_runs):
  for name in ("finished", "stopped"):
    hparams.record_run(two_runs / name)
  with tb.serve(two_runs) as base:
    groups = {g["name"]: g for g in tb.session_groups(base, expected=2)}
    columns = tb.experiment(base)
  assert set(groups) == {"finished/tensorboard", "stopped/tensorboard"}
  differs = {info["name"] for info in columns["hparamInfos"] if info["differs"]}
  assert differs == {"train.stop_after_steps"}
  assert {"eval/accuracy", "best/eval/accuracy", "train/loss"} <= {m["name"]["tag"] for m in columns["metricInfos"]}
  for name, status in (("finished", "STATUS_SUCCESS"), ("stopped", "STATUS_UNKNOWN")):
    group = groups[f"{name}/tensorboard"]
    config = hparams.flatten(json.loads((two_runs / name / "config.json").read_text()))
    assert group["hparams"] == config  # every key, as the run was configured
    assert group["sessions"][0]["status"] == status
    run = runs.read(two_runs / name)
    served = tb.metric_values(group)
    assert served["eval/accuracy"] == pytest.approx(run.final["eval/accuracy"], rel=1e-6)  # the final value
    assert served["best/eval/accuracy"] == pytest.approx(max(v for _, v in run.curves["eval/accuracy"]), rel=1e-6)
    assert served["best/eval/loss"] == pytest.approx(min(v for _, v in run.curves["eval/loss"]), rel=1e-6)
  assert runs.read(two_runs / "stopped").step == 10
