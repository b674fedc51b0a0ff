"""SavedModel (jax2tf) and TFLite (float and int8) exports, run back in TensorFlow and the LiteRT interpreter.

Skipped unless the `tf` extra is installed (pip install -e '.[tf]').
"""

import json

import numpy as np
import pytest

from tests import helpers

pytest.importorskip("tensorflow", reason="the `tf` extra is not installed: pip install -e '.[tf]'")
pytest.importorskip("ai_edge_litert", reason="the `tf` extra is not installed: pip install -e '.[tf]'")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return helpers.smoke_run(tmp_path_factory, "mnist_mlp").workdir


@pytest.fixture(scope="module")
def tf_export(run, tmp_path_factory):
  from research.export import cli

  out = tmp_path_factory.mktemp("tf_export") / "export"
  # tflite comes with int8
  assert cli.main(["--workdir", str(run), "--out", str(out), "--format", "tflite_int8,saved_model"]) == 0
  return out


@pytest.fixture(scope="module")
def reference(run):
  from research.export.model import real_inputs
  from research.train.experiment import trained_model

  model, config, _ = trained_model(run)
  return [(x, np.asarray(model(x, train=False))) for (x,) in real_inputs(config, "test", [5, 33], offset=300)]


def test_saved_model_serves_like_jax_at_any_batch_size(tf_export, reference):
  import tensorflow as tf

  serve = tf.saved_model.load(str(tf_export / "saved_model")).signatures["serving_default"]
  assert serve.structured_input_signature[1]["image"].shape.as_list() == [None, 784]
  for x, want in reference:
    got = serve(image=tf.constant(x))["logits"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_tflite_runs_like_jax_at_any_batch_size(tf_export, reference):
  from ai_edge_litert.interpreter import Interpreter

  interpreter = Interpreter(model_path=str(tf_export / "model.tflite"))
  (image,) = interpreter.get_input_details()
  assert list(image["shape_signature"]) == [-1, 784]
  for x, want in reference:
    interpreter.resize_tensor_input(image["index"], x.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(image["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_manifest_records_both_artifacts_and_verifies(tf_export):
  from research.export import verify

  manifest = verify(tf_export)
  for fmt in ("saved_model", "tflite"):
    report = manifest["artifacts"][fmt]["parity"]
    assert report["passed"] and sorted({b["batch_size"] for b in report["batches"]}) == [1, 64]
  assert manifest["artifacts"]["saved_model"]["platforms"] == ["cpu", "cuda"]
  assert {"saved_model/saved_model.pb", "model.tflite"} <= set(manifest["files"])
  assert manifest["versions"]["tensorflow-cpu"] and manifest["versions"]["ai-edge-litert"]


def test_tflite_with_a_fixed_batch(run, tmp_path, reference):
  from ai_edge_litert.interpreter import Interpreter

  from research.export import cli

  out = tmp_path / "fixed"
  assert cli.main(["--workdir", str(run), "--format", "tflite", "--tflite-batch", "4", "--out", str(out)]) == 0
  manifest = json.loads((out / "manifest.json").read_text())
  artifact = manifest["artifacts"]["tflite"]
  assert artifact["batch"] == 4 and not artifact["dynamic_batch"]
  assert artifact["parity"]["passed"]  # batches 1 and 64 were fed as padded slices of 4
  assert sorted(manifest["files"]) == ["model.tflite"]  # the SavedModel it came from is not kept
  interpreter = Interpreter(model_path=str(out / "model.tflite"))
  interpreter.allocate_tensors()
  (image,) = interpreter.get_input_details()
  assert list(image["shape_signature"]) == [4, 784]
  x, want = reference[0]
  interpreter.set_tensor(image["index"], x[:4])
  interpreter.invoke()
  got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
  np.testing.assert_allclose(got, want[:4], atol=1e-4, rtol=0)


def test_tflite_int8_is_3x_smaller_and_keeps_test_accuracy_within_1_point(run, tf_export):
  from research.export import tflite
  from research.export.model import labeled_inputs
  from research.train.experiment import load_config

  manifest = json.loads((tf_export / "manifest.json").read_text())
  artifact = manifest["artifacts"]["tflite_int8"]
  assert (tf_export / "model.tflite").stat().st_size / (tf_export / "model.int8.tflite").stat().st_size >= 3
  inputs, labels = labeled_inputs(load_config(run), "test")
  assert len(labels) == 10_000

  def accuracy(file):
    run_model = tflite.runner(tf_export / file, ["image"], ["logits"])
    return float(np.mean(np.argmax(run_model(*inputs)[0], -1) == labels))

  float_accuracy, int8_accuracy = accuracy("model.tflite"), accuracy("model.int8.tflite")
  assert float_accuracy - int8_accuracy <= 0.01
  assert artifact["accuracy"] == pytest.approx(int8_accuracy)
  assert artifact["vs_float"]["format"] == "tflite" and artifact["vs_float"]["passed"]
