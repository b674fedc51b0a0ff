"""A workdir is self-contained: restore, export and evaluate need no training data, and export scores exactly
the split training evaluates, with the cleaning and the label names in its manifest.

The run is the text classifier (cleaning, a fitted BPE tokenizer, class names). "No data" is an empty data
cache with the hub and the package index both unreachable (HF_HUB_OFFLINE, PIP_NO_INDEX), so no source of
the dataset can load.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from research.data import spec as data_spec
from tests import helpers


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """The shared smoke run, copied: the tests export and evaluate into it."""
  workdir = tmp_path_factory.mktemp("rt") / "run"
  shutil.copytree(helpers.smoke_run(tmp_path_factory, "rotten_tomatoes_transformer").workdir, workdir)
  return workdir


def _env(data_dir: Path) -> dict:
  return {**helpers.env_with_devices(1), "RESEARCH_DATA_DIR": str(data_dir), "PIP_NO_INDEX": "1",
          "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _script(script: str, *args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(helpers.ROOT / "scripts" / script), *args], cwd=helpers.ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _last_eval(workdir: Path) -> dict:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if "eval/accuracy" in r][-1]


def test_the_workdir_records_what_its_model_needs(run):
  record = data_spec.read(run)
  assert record["label_names"] == ["negative", "positive"]
  assert record["clean"] == "normalize_text|drop_empty|dedupe"
  assert record["columns"]["text"] == {"shape": [], "dtype": "str"}
  assert record["columns"]["label"]["range"] == [0, 1]
  assert (run / "tokenizer.json").is_file() or any(run.glob("*tokenizer*"))


_RESTORE = """
import json, sys
import jax, numpy as np
from research.train import experiment
config, graphdef, state, meta = experiment.restore(sys.argv[1])
leaves = {jax.tree_util.keystr(p): float(np.sum(np.asarray(v, np.float64))) for p, v in
          jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))}
print(json.dumps({"step": int(meta["step"]), "sums": leaves}))
"""


def test_restore_without_data_gives_the_checkpoints_parameters(run, tmp_path):
  done = subprocess.run([sys.executable, "-c", _RESTORE, str(run)], cwd=helpers.ROOT, env=_env(tmp_path),
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  saved = helpers.checkpoint_params(run, result["step"])
  assert result["step"] == 8 and len(result["sums"]) == len(saved)
  np.testing.assert_allclose(sorted(result["sums"].values()),
                             sorted(float(np.sum(v.astype(np.float64))) for v in saved.values()), rtol=1e-6)


def test_export_without_data_checks_on_synthetic_inputs_and_says_so(run, tmp_path):
  out = run / "export_without_data"
  done = _script("export.py", "--workdir", str(run), "--out", str(out), env=_env(tmp_path))
  assert done.returncode == 0, done.stderr[-3000:]
  assert "no test data" in done.stderr and "test accuracy is not measured" in done.stderr
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["labels"] == ["negative", "positive"]
  assert manifest["reference"]["evaluation"] == {"skipped": "no test data was reachable"}
  assert manifest["artifacts"]["onnx"]["parity"]["passed"] and "accuracy" not in manifest["artifacts"]["onnx"]
  clean = manifest["preprocessing"]["clean"]
  assert clean["pipeline"] == "normalize_text|drop_empty|dedupe"
  assert [op["name"] for op in clean["ops"]] == ["normalize_text", "drop_empty", "dedupe"]
  assert clean["ops"][0]["params"]["lowercase"] is True
  assert manifest["preprocessing"]["raw_inputs"] == {"text": {"shape": [None], "dtype": "str"}}


def test_export_scores_the_split_training_evaluates_loading_it_once(run, monkeypatch):
  """The exported model's test accuracy equals the training loop's eval accuracy at that step (the same
  cleaned split), and the export reads the test split once and the train split never."""
  from research.export import export
  from research.train import experiment

  loads = []
  real = experiment.get_split  # every split the library loads goes through it (after it: the cleaning)
  monkeypatch.setattr(experiment, "get_split", lambda name, split: loads.append(split) or real(name, split))
  out = export(run, formats="onnx", out=run / "export_with_data", log=lambda message: None)
  manifest = json.loads((out / "manifest.json").read_text())
  assert loads == ["test"]
  trained = _last_eval(run)
  assert manifest["source"]["step"] == trained["step"]
  assert manifest["reference"]["accuracy"] == pytest.approx(trained["eval/accuracy"], abs=1e-6)
  assert manifest["artifacts"]["onnx"]["accuracy"] == pytest.approx(trained["eval/accuracy"], abs=1e-3)
  assert manifest["reference"]["evaluation"]["examples"] == data_spec.read(run)["examples"]["test"]


def test_evaluate_needs_only_the_split_it_evaluates(run, tmp_path):
  """With only the test split in the cache (no train split, no hub): evaluation gives training's numbers."""
  cache = tmp_path / "data"
  source = Path(os.environ["RESEARCH_DATA_DIR"]) / "rotten_tomatoes" / "test.npz"
  (cache / "rotten_tomatoes").mkdir(parents=True)
  shutil.copy(source, cache / "rotten_tomatoes" / "test.npz")
  done = _script("evaluate.py", "--workdir", str(run), env=_env(cache))
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads((run / "eval" / "test_8.json").read_text())
  assert result["metrics"]["accuracy"] == pytest.approx(_last_eval(run)["eval/accuracy"], abs=1e-6)


def test_evaluate_without_data_is_one_line_naming_the_dataset(run, tmp_path):
  done = _script("evaluate.py", "--workdir", str(run), env=_env(tmp_path))
  assert done.returncode == 2 and "Traceback" not in done.stderr
  errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "rotten_tomatoes" in errors[0], done.stderr[-2000:]
