"""Predictions from an export directory alone equal the trained model's own, on raw pixels and raw text.

Each model is the test run's shared smoke run (tests/helpers.py), exported to ONNX and StableHLO;
`Predictor` then sees only the export directory: the reference is the workdir's
model (research.train.experiment.trained_model) on the training pipeline's inputs.
"""

import json
import shutil

import numpy as np
import pytest

from research.errors import InputError
from tests import helpers

pytest.importorskip("onnxruntime", reason="the `onnx` extra is not installed: pip install -e '.[onnx]'")


def _export(tmp_path_factory, name: str) -> tuple:
  """The shared smoke run of configs/<name>.py (tests/helpers.py) and its ONNX + StableHLO export."""
  from research.export import export

  workdir = helpers.smoke_run(tmp_path_factory, name).workdir
  out = export(workdir, formats=("onnx", "stablehlo"), out=tmp_path_factory.mktemp(name) / "export",
               batch_sizes=(1,), accuracy_examples=64, log=lambda _: None)
  return workdir, out


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
  return _export(tmp_path_factory, "mnist_mlp")


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
  return _export(tmp_path_factory, "rotten_tomatoes_transformer")


def _reference(workdir, raw: dict) -> np.ndarray:
  """The trained model's class probabilities on `raw`, through the workdir's own preprocessing."""
  from research.serve.predictor import softmax
  from research.train import experiment

  model, config, _ = experiment.trained_model(workdir)
  preprocess = experiment.preprocessor(config, workdir)
  return softmax(np.asarray(model(preprocess(raw)[config.data.input_key], train=False), np.float32))


@pytest.mark.parametrize("backend", ["onnx", "jax"])
def test_raw_pixels_predict_like_the_trained_model(mlp, backend):
  from research.data import sources
  from research.serve import Predictor

  workdir, export_dir = mlp
  test = sources.get_split("mnist", "test")
  pixels = test["image"][:64]  # uint8 in 0-255, as a camera or a PNG gives them
  model = Predictor.load(export_dir, backend=backend)
  assert model.signature == {"image": {"shape": [None, 28, 28, 1], "dtype": "uint8"}}
  result = model.predict({"image": pixels})
  want = _reference(workdir, {"image": pixels, "label": test["label"][:64]})
  np.testing.assert_allclose(result["probabilities"], want, atol=1e-5)
  assert np.array_equal(result["predictions"], want.argmax(-1))
  assert result["labels"] == [str(c) for c in want.argmax(-1)] and result["label_names"] == [str(i) for i in range(10)]
  assert (result["predictions"] == test["label"][:64]).mean() > 0.5  # a trained model, not noise


def test_raw_text_predicts_like_the_trained_model_with_the_exported_tokenizer(transformer):
  from research.data.text import normalize_one
  from research.serve import Predictor
  from research.train import experiment

  workdir, export_dir = transformer
  config = experiment.load_config(workdir)
  texts = list(experiment.load_split(config, "test")["text"][:16]) + ["<b>A GRIPPING</b>, Funny film!"]
  model = Predictor.load(export_dir)
  assert model.signature == {"text": {"shape": [None], "dtype": "str"}} and model.label_names == ["negative",
                                                                                                   "positive"]
  result = model.predict({"text": texts})
  # Training cleaned its splits at load time (normalize_text); the server normalizes each request the same way.
  want = _reference(workdir, {"text": np.array([normalize_one(t) for t in texts], dtype=object)})
  np.testing.assert_allclose(result["probabilities"], want, atol=1e-5)


@pytest.mark.parametrize("raw, words", [
    ({"image": np.zeros((2, 28, 28), np.uint8)}, ["shape [2, 28, 28]", "uint8[N, 28, 28, 1]"]),
    ({"image": np.full((1, 28, 28, 1), 300)}, ["values in [300, 300]", "0 to 255"]),
    ({"image": np.full((1, 28, 28, 1), 0.5)}, ["whole numbers"]),
    ({"image": np.full((1, 28, 28, 1), np.nan)}, ["NaN"]),
    ({"image": [[["a"]]]}, ["must hold numbers"]),
    ({"image": np.full((1, 28, 28, 1), 1 + 2j)}, ["must hold numbers", "complex128"]),
    ({"image": np.full((1, 28, 28, 1), -1, np.int8)}, ["values in [-1, -1]"]),
    ({"pixels": np.zeros((1, 28, 28, 1))}, ["missing input 'image'"]),
    ({"image": np.zeros((0, 28, 28, 1), np.uint8)}, ["no examples"]),
])
def test_inputs_that_do_not_fit_the_signature_are_named(mlp, raw, words):
  from research.serve import Predictor

  with pytest.raises(InputError) as error:
    Predictor.load(mlp[1]).predict(raw)
  assert all(w in str(error.value) for w in words), str(error.value)


def test_text_longer_than_the_limit_is_refused(transformer):
  from research.serve import Predictor, inputs

  with pytest.raises(InputError, match=f"at most {inputs.MAX_TEXT_CHARS}"):
    Predictor.load(transformer[1]).predict({"text": ["fine", "x" * (inputs.MAX_TEXT_CHARS + 1)]})


def test_predict_script_reads_images_and_arrays_and_refuses_a_tampered_export(mlp, tmp_path):
  from PIL import Image

  from research.data import sources

  workdir, export_dir = mlp
  test = sources.get_split("mnist", "test")
  Image.fromarray(test["image"][0, :, :, 0]).save(tmp_path / "digit.png")
  np.save(tmp_path / "digits.npy", test["image"][1:4])
  done = helpers.run_script("predict.py", "--export", str(export_dir), str(tmp_path / "digit.png"),
                            str(tmp_path / "digits.npy"), "--json")
  assert done.returncode == 0, done.stderr[-2000:]
  examples = json.loads(done.stdout)["examples"]
  assert [e["input"] for e in examples] == [str(tmp_path / "digit.png")] + [
      f"{tmp_path / 'digits.npy'}[{i}]" for i in range(3)]
  want = _reference(workdir, {"image": test["image"][:4], "label": test["label"][:4]})
  assert [e["prediction"] for e in examples] == want.argmax(-1).tolist()

  Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "big.png")
  wrong = helpers.run_script("predict.py", "--export", str(export_dir), str(tmp_path / "big.png"))
  assert wrong.returncode == 2 and wrong.stderr.strip() == (f"error: {tmp_path / 'big.png'} is 32x32 pixels; the "
                                                             f"model takes 28x28: resize it first.")
  tampered = tmp_path / "tampered"
  shutil.copytree(export_dir, tampered)
  data = bytearray((tampered / "model.onnx").read_bytes())
  data[len(data) // 2] ^= 1
  (tampered / "model.onnx").write_bytes(bytes(data))
  refused = helpers.run_script("predict.py", "--export", str(tampered), str(tmp_path / "digit.png"))
  assert refused.returncode == 1 and "model.onnx: sha256 mismatch" in refused.stderr and "refused" in refused.stderr
