"""The export matrix: every zoo family's `:smoke` config, trained briefly, exported to every format, checked.

For each family whose config exists: its smoke run (trained once per test run
and shared with the family's own tests: helpers.smoke_run), then
`research.export.export` to ONNX and StableHLO (and SavedModel and TFLite when
the `tf` extra is importable), which loads every artifact back in its own
runtime and holds it to 1e-4 of JAX on real test inputs at two batch sizes. A
combination that cannot work must fail with the one-line ConfigError that
names the format and the converter's reason.

GPT and the VAE are exported through their `export_fn` (research/export/model.py):
GPT as logits of a fixed context of block_size tokens, the VAE as its decoder
(latents -> pixel probabilities).

Also here: `scripts/benchmark.py inference --quick` runs end to end.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from research.errors import ConfigError
from tests import helpers

pytest.importorskip("jax2onnx", reason="the `onnx` extra is not installed: pip install -e '.[onnx]'")

TF = all(importlib.util.find_spec(p) is not None for p in ("tensorflow", "ai_edge_litert"))
FORMATS = ("onnx", "stablehlo", *(("saved_model", "tflite") if TF else ()))


@dataclasses.dataclass(frozen=True)
class Family:
  config: str
  inputs: dict  # input name -> (per-example shape, dtype) of the exported function
  outputs: dict  # output name -> per-example shape
  cannot: dict = dataclasses.field(default_factory=dict)  # format -> words its one-line error must contain
  fixed_tflite_batch: int | None = None  # where tflite cannot take a dynamic batch: exported with this one


_NOT_A_CLASSIFIER = ["are checked by test accuracy", "is not a classifier", "Export float formats"]
FAMILIES = [
    Family("mnist_mlp", {"image": ((784,), "float32")}, {"logits": (10,)}),
    Family("mnist_cnn", {"image": ((28, 28, 1), "float32")}, {"logits": (10,)}),
    Family("fashion_mnist_resnet", {"image": ((28, 28, 1), "float32")}, {"logits": (10,)}),
    # A bidirectional LSTM: with a dynamic batch its token gathers become a `dynamic_gather`, which the TFLite
    # converter cannot lower; with the batch fixed (--tflite-batch) it converts.
    Family("rotten_tomatoes_lstm", {"tokens": ((32,), "int32")}, {"logits": (2,)},
           cannot={"tflite": ["Format 'tflite' cannot export model 'rnn'", "dynamic_gather", "--tflite-batch N"]},
           fixed_tflite_batch=8),
    Family("rotten_tomatoes_transformer", {"tokens": ((32,), "int32")}, {"logits": (2,)}),
    # int8 formats are held to their float base's test accuracy, which only a classifier has.
    Family("shakespeare_gpt", {"tokens": ((32,), "int32")}, {"logits": (32, 256)},
           cannot={"onnx_int8_dynamic": _NOT_A_CLASSIFIER, "tflite_int8": _NOT_A_CLASSIFIER}),
    Family("mnist_vae", {"z": ((4,), "float32")}, {"probs": (28, 28, 1)},
           cannot={"onnx_int8_static": _NOT_A_CLASSIFIER, "tflite_int8": _NOT_A_CLASSIFIER}),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """trained(name) -> the workdir of configs/<name>.py:smoke, the run the family's own tests train (shared)."""

  def get(name: str) -> Path:
    if not (helpers.ROOT / "configs" / f"{name}.py").exists():
      pytest.skip(f"configs/{name}.py does not exist yet")
    return helpers.smoke_run(tmp_path_factory, name).workdir

  return get


@pytest.fixture(autouse=True)
def fast_latency(monkeypatch):
  """Latency is a benchmark's business: here a few calls per artifact are enough."""
  from research.export import measure

  real = measure.latency
  monkeypatch.setattr(measure, "latency", lambda run, inputs, **kw: real(run, inputs, warmup=1, iterations=3,
                                                                         budget_s=0.0))


@pytest.mark.parametrize("family", FAMILIES, ids=[f.config for f in FAMILIES])
def test_family_exports_to_every_format_with_parity(family, tmp_path, trained):
  from research.export import FORMATS as REGISTRY
  from research.export import export, verify

  run = trained(family.config)
  working = [f for f in FORMATS if f not in family.cannot]
  options = {}
  if TF and family.fixed_tflite_batch:
    working.append("tflite")
    options["tflite"] = {"batch": family.fixed_tflite_batch}
  out = export(run, formats=working, out=tmp_path / "export", batch_sizes=(1, 8), accuracy_examples=256,
               options=options, log=lambda _: None)
  manifest = verify(out)
  assert [i["name"] for i in manifest["inputs"]] == list(family.inputs)
  for spec in manifest["inputs"]:
    shape, dtype = family.inputs[spec["name"]]
    assert spec["shape"] == [None, *shape] and spec["dtype"] == dtype, spec
  assert {o["name"]: o["shape"] for o in manifest["outputs"]} == {k: [None, *v] for k, v in family.outputs.items()}
  assert sorted(manifest["artifacts"]) == sorted(working)
  assert manifest["model"]["function"] == ("export_fn" if family.config in ("shakespeare_gpt", "mnist_vae")
                                           else "__call__")
  for op in manifest["preprocessing"]["ops"]:
    if op["name"] == "tokenize":  # the fitted tokenizer travels with the export, checksummed
      assert op["file"] == "assets/tokenizer.json" and op["file"] in manifest["files"], op
  for fmt, artifact in manifest["artifacts"].items():
    report = artifact["parity"]
    assert report["passed"] and report["max_abs_diff"] <= 1e-4, (fmt, report)
    assert sorted({b["batch_size"] for b in report["batches"]}) == [1, 8], fmt

  for fmt, words in family.cannot.items():
    if REGISTRY.get(fmt).missing():
      continue
    _assert_one_line_error(lambda: export(run, formats=[fmt], out=tmp_path / f"export_{fmt}", batch_sizes=(1,),
                                          log=lambda _: None), words)
    assert not (tmp_path / f"export_{fmt}").exists()


def _assert_one_line_error(call, words):
  with pytest.raises(ConfigError) as error:
    call()
  message = str(error.value)
  assert "\n" not in message and all(w in message for w in words), message


def _reverse_cumsum(model, x):
  import jax

  _, ys = jax.lax.scan(lambda c, v: (c + v, c + v), x[:, 0] * 0, x.T, reverse=True)  # no ONNX rule for this
  return model(ys.T, train=False)


def test_a_function_a_converter_cannot_express_is_a_one_line_error_naming_format_and_reason(
    trained, tmp_path, monkeypatch):
  from research.export import export
  from research.models.mlp import MLP

  run = trained("mnist_mlp")
  monkeypatch.setattr(MLP, "export_fn", lambda self, batch: (_reverse_cumsum, {"image": batch["image"]}),
                      raising=False)
  _assert_one_line_error(lambda: export(run, formats="stablehlo,onnx", out=tmp_path / "out", batch_sizes=(1,),
                                        log=lambda _: None),
                         ["Format 'onnx' cannot export model 'mlp'", "Reverse scan is not supported",
                          "Other formats may: saved_model, stablehlo, tflite"])
  assert not (tmp_path / "out").exists()
  out = export(run, formats="stablehlo", out=tmp_path / "out", batch_sizes=(1, 3), log=lambda _: None)
  assert json.loads((out / "manifest.json").read_text())["artifacts"]["stablehlo"]["parity"]["passed"]


def test_export_fn_must_return_a_function_and_named_inputs():
  from research.export.model import export_spec

  class Bad:
    def export_fn(self, batch):
      return {"x": batch["x"]}

  with pytest.raises(TypeError, match=r"must return \(fn, inputs\)"):
    export_spec(Bad(), {"x": np.zeros((2, 3))})

  class Good:
    def export_fn(self, batch):
      return (lambda m, x: x), {"x": batch["x"]}

  fn, inputs, outputs = export_spec(Good(), {"x": np.zeros((2, 3))})
  assert list(inputs) == ["x"] and outputs == ["logits"]


def test_inference_benchmark_quick_runs_end_to_end(tmp_path):
  out = tmp_path / "inference.md"
  done = helpers.run_script("benchmark.py", "inference", "--quick", "--out", str(out), devices=1, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  text = out.read_text()
  assert "### mlp" in text and "### cnn" not in text  # --quick: the MLP
  rows = [line.split("|") for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 64 |")]
  systems = {r[2].strip() for r in rows}
  assert {"jax (jit)", "onnxruntime", "onnxruntime int8 dynamic", "onnxruntime int8 static", "tf saved_model",
          "tflite", "tflite fixed batch", "tflite int8 fixed batch"} <= systems
  jax_rows = [r for r in rows if r[2].strip() == "jax (jit)"]
  assert len(jax_rows) == 2 and all(r[6].strip() == "1.00x" for r in jax_rows)
  onnx_rows = [r for r in rows if r[2].strip() == "onnxruntime"]
  assert all(r[6].strip().endswith("x") and float(r[7]) <= 1e-4 for r in onnx_rows), onnx_rows  # timed and right
