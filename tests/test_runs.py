"""scripts/runs.py: the table of runs (what differs, final and best metrics, progress, wall time) and the curves PNG."""

import csv
import io
import shutil

import pytest
from PIL import Image

from research import hparams, runs
from tests import helpers


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
  """Real smoke runs: the shared one (learning rate 1e-3), one at 3e-3, one stopped at step 10 of 20."""
  root = tmp_path_factory.mktemp("compare")
  shutil.copytree(helpers.smoke_run(tmp_path_factory, "mnist_mlp").workdir, root / "a")
  for name, override in (("b", "--config.optimizer.learning_rate=3e-3"), ("c", "--config.train.stop_after_steps=10")):
    shutil.copytree(helpers.shared_run(tmp_path_factory, "configs/mnist_mlp.py:smoke", override).workdir, root / name)
  return root


def _runs_py(*args: str):
  return helpers.run_script("runs.py", *map(str, args), timeout=120)


def test_a_run_is_read_from_its_workdir(three_runs):
  run = runs.read(three_runs / "a")
  assert run.finished and run.total_steps == 20 and run.step == 20
  accuracy = run.curves["eval/accuracy"]
  assert [s for s, _ in accuracy] == [10, 20]
  assert run.final["eval/accuracy"] == accuracy[-1][1] and run.best["eval/accuracy"] == max(accuracy, key=lambda p: p[1])
  assert run.best["eval/loss"][1] == min(v for _, v in run.curves["eval/loss"])
  assert 0 < run.wall_time < 3600
  stopped = runs.read(three_runs / "c")
  assert not stopped.finished and stopped.step == 10 and runs.checkpoint_steps(three_runs / "c") == [10]


def test_the_table_shows_what_differs_sorted_best_first(three_runs):
  done = _runs_py(three_runs, "--sort", "best/eval/accuracy")
  assert done.returncode == 0, done.stderr
  header, rule, *rows = done.stdout.strip().splitlines()
  assert set(rule) == {"|", "-", ":"}  # a markdown table
  columns = [c.strip() for c in header.strip("|").split("|")]
  evals = sorted(tag for tag in runs.read(three_runs / "a").final if tag.startswith("eval/"))  # accuracy, f1_macro, ...
  assert columns == ["run", "optimizer.learning_rate", "train.stop_after_steps",
                     *[c for tag in evals for c in (tag, f"best/{tag}")], "train/loss", "status", "wall_time"]
  cells = [dict(zip(columns, (c.strip() for c in row.strip("|").split("|")))) for row in rows]
  best = {name: runs.read(three_runs / name).best["eval/accuracy"][1] for name in "abc"}
  assert [c["run"] for c in cells] == sorted(best, key=best.get, reverse=True)
  assert {c["run"]: c["status"] for c in cells} == {"a": "done", "b": "done", "c": "step 10/20"}
  assert {c["run"]: float(c["best/eval/accuracy"]) for c in cells} == pytest.approx(best, abs=1e-4)


def test_csv_holds_the_full_values_and_a_bad_sort_column_is_one_line(three_runs):
  done = _runs_py(three_runs, "--format", "csv", "--metrics", "eval/accuracy", "--sort", "optimizer.learning_rate")
  assert done.returncode == 0, done.stderr
  table = list(csv.DictReader(io.StringIO(done.stdout)))
  assert [r["optimizer.learning_rate"] for r in table] == ["0.001", "0.001", "0.003"]
  for r in table:
    assert float(r["eval/accuracy"]) == runs.read(three_runs / r["run"]).final["eval/accuracy"]
    assert float(r["wall_time"]) > 0
  bad = _runs_py(three_runs, "--sort", "accuracy")
  assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
  assert "--sort 'accuracy' is not a column; choose one of: run, optimizer.learning_rate" in bad.stderr


def test_plot_draws_the_chosen_curves_and_hparams_backfills(three_runs, tmp_path):
  out = tmp_path / "curves.png"
  done = _runs_py(three_runs, "--plot", "eval/accuracy,train/loss", "--out", out, "--hparams")
  assert done.returncode == 0, done.stderr
  with Image.open(out) as image:
    assert image.format == "PNG" and image.size == (1100, 400)  # two 5.5 x 4 inch panels at 100 dpi
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 16)) > 10  # lines drawn, not a blank canvas
  assert all((three_runs / name / "tensorboard" / hparams.FILE).is_file() for name in "abc")
  missing = _runs_py(three_runs, "--plot", "eval/acuracy")
  assert missing.returncode == 2 and "no run logged it; logged metrics: eval/accuracy" in missing.stderr
