"""Export: ONNX (float and int8) and StableHLO checked against JAX on real MNIST, manifest.json, --verify, errors.

The smoke MLP (a real subprocess, shared with other modules: helpers.smoke_run) is exported once
through the command-line entry point, in this process, to a directory of this module's.
"""

import hashlib
import json
import shutil

import numpy as np
import pytest

from tests import helpers

pytest.importorskip("jax2onnx", reason="the `onnx` extra is not installed: pip install -e '.[onnx]'")
pytest.importorskip("onnxruntime", reason="the `onnx` extra is not installed: pip install -e '.[onnx]'")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return helpers.smoke_run(tmp_path_factory, "mnist_mlp").workdir


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
  from research.export import cli

  out = tmp_path_factory.mktemp("exported") / "export"
  assert cli.main(["--workdir", str(run), "--out", str(out),
                   "--format", "onnx,stablehlo,onnx_int8_dynamic,onnx_int8_static"]) == 0
  return out


def test_onnx_runs_in_onnxruntime_like_jax_at_any_batch_size(run, exported):
  import onnxruntime as ort

  from research.export.model import real_inputs
  from research.train.experiment import trained_model

  session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
  (image,) = session.get_inputs()
  assert image.name == "image" and isinstance(image.shape[0], str) and image.shape[1:] == [784]
  model, config, _ = trained_model(run)
  for (x,) in real_inputs(config, "test", [3, 17], offset=100):  # sizes the exporter did not check
    want = np.asarray(model(x, train=False))
    got = session.run(None, {"image": x})[0]
    assert got.shape == (len(x), 10)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_stablehlo_deserializes_and_runs_like_jax_at_any_batch_size(run, exported):
  import jax

  from research.export.model import real_inputs
  from research.train.experiment import trained_model

  folder = exported / "stablehlo"
  exported = jax.export.deserialize(bytearray((folder / "model.jax_exported").read_bytes()))
  assert set(exported.platforms) == {"cpu", "cuda"}
  assert "tensor<?x784xf32>" in (folder / "model.mlir").read_text()  # dynamic batch
  with np.load(folder / "weights.npz") as f:
    weights = [f[k] for k in sorted(f.files)]
  model, config, _ = trained_model(run)
  for (x,) in real_inputs(config, "test", [5, 33], offset=200):
    (got,) = exported.call(weights, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(model(x, train=False)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fmt", ["onnx", "stablehlo"])
def test_manifest_records_parity_at_two_batch_sizes(exported, fmt):
  manifest = json.loads((exported / "manifest.json").read_text())
  report = manifest["artifacts"][fmt]["parity"]
  assert report["passed"] and report["tolerance"] == 1e-4
  assert sorted({b["batch_size"] for b in report["batches"]}) == [1, 64]
  assert all(b["max_abs_diff"] <= 1e-4 and b["argmax_agreement"] == 1.0 for b in report["batches"])


def test_manifest_is_complete_and_every_sha256_matches(run, exported):
  manifest = json.loads((exported / "manifest.json").read_text())
  assert manifest["model"]["name"] == "mlp" and manifest["config"]["data"]["name"] == "mnist"
  assert manifest["inputs"] == [{"name": "image", "shape": [None, 784], "dtype": "float32"}]
  assert manifest["outputs"] == [{"name": "logits", "shape": [None, 10], "dtype": "float32"}]
  pre = manifest["preprocessing"]
  assert pre["pipeline"] == "normalize(0.1307, 0.3081)|flatten"
  assert pre["ops"][0]["params"] == {"mean": 0.1307, "std": 0.3081, "max_value": 255.0, "key": "image"}
  assert pre["raw_inputs"]["image"] == {"shape": [None, 28, 28, 1], "dtype": "uint8"}
  assert manifest["labels"] == [str(i) for i in range(10)]
  assert manifest["source"]["step"] == 20
  evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  final_eval = [row for row in evals if row["step"] == 20 and "eval/accuracy" in row][-1]
  assert manifest["source"]["eval"]["accuracy"] == pytest.approx(final_eval["eval/accuracy"], abs=1e-6)
  for package in ("python", "research", "jax", "jaxlib", "flax", "numpy", "jax2onnx", "onnx", "onnxruntime"):
    assert manifest["versions"][package], package
  on_disk = sorted(p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file())
  assert sorted([*manifest["files"], "manifest.json"]) == on_disk
  for name, entry in manifest["files"].items():
    data = (exported / name).read_bytes()
    assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


@pytest.mark.parametrize("fmt, ops", [
    ("onnx_int8_dynamic", {"DynamicQuantizeLinear", "MatMulInteger"}),
    ("onnx_int8_static", {"QuantizeLinear", "DequantizeLinear"}),
])
def test_int8_onnx_is_3x_smaller_and_keeps_test_accuracy_within_1_point(run, exported, fmt, ops):
  import onnx
  import onnxruntime as ort

  from research.export.model import labeled_inputs
  from research.train.experiment import load_config

  manifest = json.loads((exported / "manifest.json").read_text())
  artifact = manifest["artifacts"][fmt]
  path = exported / artifact["path"]
  assert ops <= {node.op_type for node in onnx.load(str(path)).graph.node}
  assert (exported / "model.onnx").stat().st_size / path.stat().st_size >= 3
  (x,), labels = labeled_inputs(load_config(run), "test")
  assert len(labels) == 10_000  # the whole real test set

  def accuracy(file):  # in calls of 1,000 rows, as the export measured it: dynamic int8 scales are per call
    session = ort.InferenceSession(str(exported / file), providers=["CPUExecutionProvider"])
    scores = np.concatenate([session.run(None, {"image": x[i:i + 1000]})[0] for i in range(0, len(x), 1000)])
    return float(np.mean(np.argmax(scores, -1) == labels))

  float_accuracy, int8_accuracy = accuracy("model.onnx"), accuracy(artifact["path"])
  assert float_accuracy - int8_accuracy <= 0.01
  assert artifact["accuracy"] == pytest.approx(int8_accuracy)
  assert manifest["artifacts"]["onnx"]["accuracy"] == pytest.approx(float_accuracy)
  assert artifact["vs_float"]["passed"] and artifact["vs_float"]["size_ratio"] >= 3
  assert set(artifact["latency_ms"]) == {"1", "64"}
  if fmt == "onnx_int8_static":
    assert artifact["calibration"] == {"split": "train", "batches": 16, "batch_size": 64}


def test_a_quantized_artifact_that_loses_accuracy_fails_the_export(run, tmp_path):
  from research.export import ParityError, export

  out = tmp_path / "export"
  with pytest.raises(ParityError, match=r"onnx_int8_dynamic[\s\S]*points below onnx"):
    export(run, formats="onnx_int8_dynamic", out=out, max_accuracy_drop=-1.0)  # demands a 100-point gain
  assert not out.exists() and (tmp_path / "export.failed" / "check.json").exists()


def test_quantizing_needs_labelled_test_data(run, tmp_path, monkeypatch):
  from research.errors import ConfigError
  from research.export import export
  from research.export import model as model_lib

  monkeypatch.setattr(model_lib, "labeled_inputs", lambda *a, **k: None)
  with pytest.raises(ConfigError, match="checked by test accuracy"):
    export(run, formats="onnx_int8_static", out=tmp_path / "export")


def test_verify_detects_one_changed_byte(exported, tmp_path):
  copy = tmp_path / "export"
  shutil.copytree(exported, copy)
  done = helpers.run_script("export.py", "--verify", str(copy), timeout=120)
  assert done.returncode == 0 and "match" in done.stdout, done.stderr
  data = bytearray((copy / "model.onnx").read_bytes())
  data[len(data) // 2] ^= 0x01
  (copy / "model.onnx").write_bytes(bytes(data))
  done = helpers.run_script("export.py", "--verify", str(copy), timeout=120)
  assert done.returncode == 1
  assert "model.onnx: sha256 mismatch" in done.stderr


def test_verify_names_missing_and_unlisted_files(exported, tmp_path):
  from research.export import VerifyError, verify

  copy = tmp_path / "export"
  shutil.copytree(exported, copy)
  (copy / "model.onnx").rename(copy / "renamed.onnx")
  with pytest.raises(VerifyError, match=r"model\.onnx: missing[\s\S]*renamed\.onnx: not listed"):
    verify(copy)


@pytest.mark.parametrize("args, words", [
    (["--format", "onnx,pdf"], ["'pdf'", "onnx"]),
    (["--step", "999"], ["step 999", "available"]),
    (["--format", "onnx", "--out", "{workdir}"], ["would replace the workdir"]),
    (["--format", "onnx", "--tflite-batch", "1"], ["add tflite to --format"]),
    (["--parity-batch-sizes", "0,64"], ["positive integers"]),
])
def test_bad_arguments_exit_2_with_one_line(run, args, words):
  args = [a.format(workdir=run) for a in args]
  done = helpers.run_script("export.py", "--workdir", str(run), *args, timeout=120)
  assert done.returncode == 2
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
  for word in words:
    assert word in lines[0], lines[0]


def test_missing_workdir_exits_2(tmp_path):
  done = helpers.run_script("export.py", "--workdir", str(tmp_path / "nope"), timeout=120)
  assert done.returncode == 2 and done.stderr.strip().splitlines() == [f"error: --workdir {tmp_path / 'nope'} does not exist: give the workdir of a training run."]


def test_parity_failure_fails_the_export_with_a_report(run, exported, tmp_path, monkeypatch, capsys):
  from research.export import cli
  from research.export import onnx as onnx_format

  load = onnx_format.load
  monkeypatch.setattr(onnx_format, "load", lambda out, artifact: (
      lambda *inputs: [y + 1e-3 for y in load(out, artifact)(*inputs)]))
  out = tmp_path / "export"
  assert cli.main(["--workdir", str(run), "--out", str(out)]) == 1
  err = capsys.readouterr().err
  assert "check failed for onnx" in err and "FAILED" in err and "batch    1" in err and "batch   64" in err
  assert not out.exists()  # no manifest claims a failed artifact
  report = json.loads((tmp_path / "export.failed" / "check.json").read_text())
  assert not report["passed"] and report["max_abs_diff"] > 1e-4


def test_a_format_whose_extra_is_missing_names_the_extra(monkeypatch):
  import importlib.util

  from research.errors import ConfigError
  from research.export import parse_formats

  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else find_spec(name, *a))
  with pytest.raises(ConfigError, match=r"'tflite' needs tensorflow .*pip install -e '\.\[tf\]'"):
    parse_formats("onnx,tflite")


def test_the_core_export_path_does_not_import_tensorflow():
  import subprocess
  import sys

  code = ("import sys, research.export.cli, research.export.onnx, research.export.stablehlo, research.export.manifest;"
          "research.export.cli.parser();"
          "print(sorted(m for m in ('tensorflow', 'jax.experimental.jax2tf', 'jax2onnx') if m in sys.modules))")
  done = subprocess.run([sys.executable, "-c", code], cwd=helpers.ROOT, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == "[]"


def test_an_onnx_conversion_loads_only_the_rules_for_jax_primitives():
  """jax2onnx would import all of its rules first, Equinox's among them, which build modules at import (seconds
  of every export); the library's conversion (of a jaxpr: a matmul, a conv and a softmax here) needs only JAX's."""
  import subprocess
  import sys

  code = """
import sys, jax, numpy as np, onnxruntime
from research.export import onnx

class Model:  # what onnx.to_proto asks of an Exportable
  name, output_names = "f", ["y"]
  args = [np.random.default_rng(0).standard_normal(s).astype(np.float32) for s in ((2, 1, 4, 4), (32, 3), (2, 1, 3, 3))]
  inputs = [type("Input", (), {"name": n}) for n in ("x", "w", "k")]

  def input_structs(self, batch):
    return [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in self.args]

  def __call__(self, x, w, k):
    return jax.nn.softmax(jax.lax.conv(x, k, (1, 1), "SAME").reshape(2, -1) @ w)

model = Model()
session = onnxruntime.InferenceSession(onnx.to_proto(model).SerializeToString())
got = session.run(None, dict(zip(["x", "w", "k"], model.args)))[0]
np.testing.assert_allclose(got, model(*model.args), atol=1e-5)
trees = {m.split(".")[2] for m in sys.modules if m.startswith("jax2onnx.plugins.")}
print(sorted(t for t in trees if not t.startswith("_") and t != "plugin_system"))
"""
  done = subprocess.run([sys.executable, "-c", code], cwd=helpers.ROOT, capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip().splitlines()[-1] == "['jax']"  # not equinox, flax, dm_pix or examples


def test_a_model_a_format_cannot_express_is_one_line_exit_2(run, tmp_path, monkeypatch, capsys):
  from research.export import cli
  from research.export import onnx as onnx_format

  def unsupported(*args, **kwargs):  # what jax2onnx 0.17 raises for a bidirectional RNN's reverse scan
    raise NotImplementedError("Reverse scan is not supported in IR pipeline.")

  monkeypatch.setattr(onnx_format, "to_proto", unsupported)
  out = tmp_path / "export"
  assert cli.main(["--workdir", str(run), "--format", "stablehlo,onnx", "--out", str(out)]) == 2
  (line,) = capsys.readouterr().err.strip().splitlines()[-1:]
  assert line.startswith("error: Format 'onnx' cannot export model 'mlp': NotImplementedError: Reverse scan")
  assert not out.exists() and not list(tmp_path.glob(".export*"))
