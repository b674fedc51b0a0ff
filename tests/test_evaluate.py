"""scripts/evaluate.py and research/train/evaluate.py: per-split results, per-class metrics and the confusion
matrix checked against an independent computation, one-line errors, a quiet console."""

import json
import logging
import os
import sys
import warnings

import numpy as np
import pytest

from tests import helpers


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A smoke run with checkpoints at steps 10 and 20 and no best marked (best_metric unset)."""
  workdir = tmp_path_factory.mktemp("evaluate")
  helpers.train_here(workdir, "--config.checkpoint.best_metric=")
  return workdir


@pytest.fixture(scope="module")
def evaluated(run):
  """The test split evaluated quietly (the default) and the train split with --verbose."""
  test = helpers.run_script("evaluate.py", "--workdir", str(run), timeout=300)
  assert test.returncode == 0, test.stderr[-3000:]
  train = helpers.run_script("evaluate.py", "--workdir", str(run), "--split", "train", "--verbose", timeout=300)
  assert train.returncode == 0, train.stderr[-3000:]
  return run, test, train


def test_each_split_has_its_own_result_file(evaluated):
  run, _, _ = evaluated
  test = json.loads((run / "eval" / "test_20.json").read_text())
  train = json.loads((run / "eval" / "train_20.json").read_text())
  assert (test["split"], test["examples"], test["step"]) == ("test", 10_000, 20)
  assert (train["split"], train["examples"], train["step"]) == ("train", 60_000, 20)
  assert sum(r["support"] for r in test["per_class"]) == 10_000 and np.sum(train["confusion_matrix"]) == 60_000
  assert test["metrics"]["loss"] != train["metrics"]["loss"]
  assert not (run / "eval_20.json").exists()
  logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  at_20 = next(r for r in logged if r["step"] == 20 and "eval/accuracy" in r)
  assert test["metrics"]["accuracy"] == at_20["eval/accuracy"]  # exactly the training loop's evaluation


def test_confusion_matrix_and_per_class_scores_match_an_independent_computation(evaluated):
  from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

  from research.data import get_split
  from research.train import experiment

  run, done, _ = evaluated
  result = json.loads((run / "eval" / "test_20.json").read_text())
  # The MLP's logits in numpy, from the checkpoint's parameters read straight from disk.
  params = helpers.checkpoint_params(run, 20)
  arrays = get_split("mnist", "test")
  x = experiment.preprocessor(experiment.load_config(run), run)(arrays)["image"]
  for layer in ("hidden/0", "hidden/1"):
    x = np.maximum(x @ params[f"{layer}/kernel"] + params[f"{layer}/bias"], 0.0)
  logits = x @ params["head/kernel"] + params["head/bias"]
  predicted, labels = logits.argmax(-1), arrays["label"]
  expected = confusion_matrix(labels, predicted, labels=range(10))
  top2 = np.sort(logits, -1)[:, -2:]
  near_ties = int(np.sum(top2[:, 1] - top2[:, 0] < 1e-4))  # where float rounding may pick another class
  ours = np.asarray(result["confusion_matrix"])
  assert ours.shape == (10, 10) and ours.sum() == 10_000
  assert np.abs(ours - expected).sum() <= 2 * near_ties, (ours, expected)
  precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=range(10),
                                                                   zero_division=0)
  tol = 1e-12 if near_ties == 0 else 1e-3
  assert [r["class"] for r in result["per_class"]] == result["classes"] == [str(i) for i in range(10)]
  assert [r["support"] for r in result["per_class"]] == support.tolist()
  for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
    assert [r[name] for r in result["per_class"]] == pytest.approx(values.tolist(), abs=tol), name
    assert result["metrics"][f"{name}_macro"] == pytest.approx(values.mean(), abs=tol)
  assert result["metrics"]["accuracy"] == pytest.approx(np.trace(ours) / 10_000, abs=1e-12)
  # The same matrix, printed as a table on stdout: a header of predicted classes, then a row per true class.
  lines = done.stdout.splitlines()
  header = next(i for i, line in enumerate(lines) if line.startswith("true \\ predicted"))
  assert lines[header].split()[3:] == [str(i) for i in range(10)]
  for t in range(10):
    assert [int(v) for v in lines[header + 1 + t].split()] == [t, *ours[t]]
  assert "precision" in done.stdout and "macro avg" in done.stdout


def test_the_confusion_matrix_is_drawn_as_a_png(evaluated):
  from PIL import Image

  run, done, _ = evaluated
  path = run / "eval" / "test_20_confusion.png"
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(path) in done.stdout
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    assert image.format == "PNG" and 200 <= image.width <= 3000 and 200 <= image.height <= 3000
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
  assert len(np.unique(pixels, axis=0)) > 20  # shaded cells and text, not a blank image


@pytest.mark.parametrize("args, words", [
    (["--step", "abc"], ["--step", "'abc'"]),
    (["--step", "7"], ["step 7", "[10, 20]"]),
    (["--step", "best"], ["--step best", "checkpoint.best_metric", "10, 20"]),
    (["--split", "validation"], ["'validation'", "splits", "test", "train"]),
    (["--splt", "test"], ["--splt"]),
    (["--workdir", "{missing}"], ["does not exist"]),
])
def test_a_bad_flag_exits_2_with_one_line_naming_it(run, tmp_path, args, words):
  args = [a.format(missing=tmp_path / "nope") for a in args]
  done = helpers.run_script("evaluate.py", "--workdir", str(run), *args, timeout=300)
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
  assert "Traceback" not in done.stderr
  for word in words:
    assert word in lines[0], lines[0]


def test_other_libraries_warnings_go_to_the_log_unless_verbose(evaluated):
  run, quiet, verbose = evaluated
  assert "WARNING" not in quiet.stderr and "absl" not in quiet.stderr, quiet.stderr
  log = (run / "logs" / "warnings.log").read_text()
  assert "evaluate.py --workdir" in log and "WARNING absl: " in log  # Orbax's note on a read-only checkpoint dir
  assert "WARNING:absl:" in verbose.stderr  # --verbose: on the console, as the libraries print it


def test_quiet_routes_logging_warnings_and_native_output_and_restores_the_process(tmp_path, capfd):
  from research import console

  root = logging.getLogger()
  before = list(root.handlers)
  path = tmp_path / "logs" / "warnings.log"
  env = {}
  with console.quiet(path, environ=env, command=["tool", "--flag"]):
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert not path.exists()  # created by the first record only
    logging.getLogger("onnx_ir.serde").warning("value type not known")
    with warnings.catch_warnings():
      warnings.simplefilter("always")
      warnings.warn("deprecated thing", DeprecationWarning)
    print("progress stays on the console", file=sys.stderr)
    with console.native_output_to_log():
      os.write(2, b"native chatter\n")
  assert root.handlers == before and env == {}
  log = path.read_text().splitlines()
  assert log[0].endswith("tool --flag") and "WARNING onnx_ir.serde: value type not known" in log[1]
  assert any("DeprecationWarning: deprecated thing" in line for line in log) and "native chatter" in log
  err = capfd.readouterr().err
  assert "progress stays on the console" in err and "native chatter" not in err and "value type" not in err


def test_classification_report_matches_scikit_learn():
  from sklearn.metrics import classification_report as sk_report

  from research import metrics

  rng = np.random.default_rng(0)
  labels, predicted = rng.integers(0, 4, 500), rng.integers(0, 3, 500)  # class 3 is never predicted
  confusion = np.zeros((4, 4))
  np.add.at(confusion, (labels, predicted), 1)
  rows = metrics.classification_report(confusion, ["a", "b", "c", "d"])
  expected = sk_report(labels, predicted, labels=range(4), target_names=list("abcd"), output_dict=True,
                       zero_division=0)
  for row in rows:
    e = expected[row["class"]]
    assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
        (e["precision"], e["recall"], e["f1-score"], e["support"]), abs=1e-12)
