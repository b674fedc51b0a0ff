"""Inference latency and throughput: jitted JAX against every deployment runtime, in one run.

For the MLP and the CNN of configs/mnist_{mlp,cnn}.py and the Transformer
classifier of configs/rotten_tomatoes_transformer.py, at batch 1 and 64:

- JAX: the model's function under `jax.jit` (what `research.export` checks artifacts against);
- onnxruntime: the float ONNX model (jax2onnx), its dynamic int8 and its static int8 (QDQ) quantizations;
- TensorFlow: the jax2tf SavedModel's serving signature;
- LiteRT: the TFLite model with a dynamic batch, with the batch fixed at conversion (`--tflite-batch`),
  and dynamic-range int8 with the batch fixed.

The TensorFlow rows need the `tf` extra (run the section with a Python that has it; without it they say
"not installed"). Every artifact is built by `research.export` from the same freshly initialized model
(latency does not depend on the weights' values) and called from Python with numpy arrays in and out, as a
server would. Inputs are random with the data's shapes. Systems are interleaved within each repeat and the
table gives medians over repeats of each call's p50/p99 latency, throughput (examples/s over all timed
calls), and the p50 speed-up against JAX at the same batch size. `max abs diff` compares outputs with JAX
on the same inputs: int8 rows differ by design, float rows should be ~1e-5.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from research.bench.timing import machine, table

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"mlp": "configs/mnist_mlp.py", "cnn": "configs/mnist_cnn.py",
          "transformer": "configs/rotten_tomatoes_transformer.py"}
BATCH_SIZES = (1, 64)


def _tf_installed() -> bool:
  return all(importlib.util.find_spec(p) is not None for p in ("tensorflow", "ai_edge_litert"))


def _input_shape(config) -> tuple[tuple[int, ...], str]:
  """The per-example input shape and dtype of a config's model, from its data and preprocessing."""
  from research.data import ops

  steps = [ops.parse_op(t)[0:3] for t in filter(None, (p.strip() for p in config.data.preprocess.split("|")))]
  names = [s[0] for s in steps]
  if "tokenize" in names:
    kwargs = steps[names.index("tokenize")][2]
    return (int(kwargs.get("max_length", 128)),), "int32"
  if config.data.name in ("mnist", "fashion_mnist"):
    return ((784,) if "flatten" in names else (28, 28, 1)), "float32"
  raise ValueError(f"no input shape known for {config.data.name}")


def exportable(name: str, quick: bool):
  """The Exportable of a freshly initialized model of MODELS[name] (its `:smoke` variant when quick)."""
  from flax import nnx

  from research import config as config_lib
  from research.export.model import from_model
  from research.registry import MODELS as REGISTRY

  import research.models  # noqa: F401  (registers the zoo)

  config = config_lib.load(str(ROOT / MODELS[name]) + (":smoke" if quick else ""))
  shape, dtype = _input_shape(config)
  rng = np.random.default_rng(0)
  if dtype == "int32":
    sample = rng.integers(1, config.model.vocab_size, (2, *shape)).astype(np.int32)
  else:
    sample = rng.standard_normal((2, *shape)).astype(np.float32)
  model = REGISTRY.get(config.model.name)(config.model, sample, nnx.Rngs(config.seed))
  ex = from_model(model, config, {}, [sample], [config.data.input_key])
  params = sum(w.size for w in ex.weights)
  return ex, params


def random_inputs(ex, batch: int, seed: int = 1) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  out = []
  for spec in ex.inputs:
    if spec.dtype.startswith("int"):
      out.append(rng.integers(1, ex.config.model.vocab_size, (batch, *spec.shape)).astype(spec.dtype))
    else:
      out.append(rng.standard_normal((batch, *spec.shape)).astype(spec.dtype))
  return out


def systems(ex, out: Path, tf: bool, threads: int) -> dict:
  """{system name: make(batch) -> runner}; a runner is a function of numpy inputs -> list of numpy outputs.

  Every artifact is exported into `out` here; a system that fails to export is {name: error string}.
  """
  from research.export import onnx as onnx_format
  from research.export import quantize

  found: dict = {"jax (jit)": (lambda run: lambda batch: run)(ex.reference())}

  def onnx_runner(path):
    sess = onnx_format.session(path)
    names = [i.name for i in sess.get_inputs()]
    run = lambda *xs: [np.asarray(y) for y in sess.run(None, dict(zip(names, xs)))]  # noqa: E731
    return lambda batch: run

  def attempt(name, make):
    try:
      found[name] = make()
    except Exception as e:  # noqa: BLE001  a runtime that cannot take this model is a row, not a crash
      found[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
      traceback.print_exc()

  attempt("onnxruntime", lambda: (onnx_format.export(ex, out), onnx_runner(out / onnx_format.FILE))[1])
  if isinstance(found["onnxruntime"], str):
    found["onnxruntime int8 dynamic"] = found["onnxruntime int8 static"] = "needs the float ONNX model"
  else:
    attempt("onnxruntime int8 dynamic",
            lambda: (quantize.export_onnx_dynamic(ex, out), onnx_runner(out / quantize.DYNAMIC_FILE))[1])
    calibration = [random_inputs(ex, 32, seed=100 + i) for i in range(4)]
    attempt("onnxruntime int8 static",
            lambda: (quantize.export_onnx_static(ex, out, calibration=calibration),
                     onnx_runner(out / quantize.STATIC_FILE))[1])
  tf_rows = ("tf saved_model", "tflite", "tflite fixed batch", "tflite int8 fixed batch")
  if not tf:
    found.update({name: "not installed (the `tf` extra)" for name in tf_rows})
    return found
  from research.export import tf as tf_format
  from research.export import tflite

  names, outputs = [s.name for s in ex.inputs], ex.output_names

  def saved_model():
    artifact = tf_format.export(ex, out)
    run = tf_format.load(out, artifact)
    return lambda batch: run

  def tflite_dynamic():
    path = out / "model.tflite"
    path.write_bytes(tflite.convert(out / tf_format.DIR))
    return lambda batch: tflite.runner(path, names, outputs, threads=threads)

  def tflite_fixed(int8=False):
    def make(batch):
      path = out / f"model.b{batch}{'.int8' if int8 else ''}.tflite"
      if not path.exists():
        path.write_bytes(tflite.convert_fixed(ex, batch, int8=int8))
      return tflite.runner(path, names, outputs, batch=batch, threads=threads)
    make(BATCH_SIZES[0])  # convert now: a model the converter cannot take is reported here
    return make

  attempt("tf saved_model", saved_model)
  if isinstance(found["tf saved_model"], str):
    found.update({name: "needs the SavedModel" for name in tf_rows[1:]})
    return found
  attempt("tflite", tflite_dynamic)
  attempt("tflite fixed batch", tflite_fixed)
  attempt("tflite int8 fixed batch", lambda: tflite_fixed(int8=True))
  return found


def _time(run, inputs, *, warmup: int, budget_s: float, max_calls: int) -> dict:
  for _ in range(warmup):
    run(*inputs)
  times, deadline = [], time.perf_counter() + budget_s
  while len(times) < max_calls and (len(times) < 5 or time.perf_counter() < deadline):
    start = time.perf_counter()
    run(*inputs)
    times.append(time.perf_counter() - start)
  ms = np.asarray(times) * 1e3
  return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
          "throughput": len(inputs[0]) * len(times) / float(np.sum(times)), "calls": len(times)}


def run(quick: bool = False) -> str:
  repeats, budget_s, max_calls = (1, 0.2, 20) if quick else (3, 2.0, 2000)
  threads = os.cpu_count() or 1
  tf = _tf_installed()
  sections, notes = [], []
  with tempfile.TemporaryDirectory(prefix="research-inference-bench-") as tmp:
    for name in list(MODELS)[:1] if quick else MODELS:  # --quick: the MLP (the export matrix tests every family)
      ex, params = exportable(name, quick)
      out = Path(tmp) / name
      out.mkdir()
      found = systems(ex, out, tf, threads)
      runners = {s: {b: make(b) for b in BATCH_SIZES} for s, make in found.items() if not isinstance(make, str)}
      inputs = {b: random_inputs(ex, b) for b in BATCH_SIZES}
      reference = {b: runners["jax (jit)"][b](*inputs[b]) for b in BATCH_SIZES}
      diffs = {s: max(float(np.max(np.abs(r[b](*inputs[b])[0] - reference[b][0]))) for b in BATCH_SIZES)
               for s, r in runners.items()}
      results = {(s, b): [] for s in runners for b in BATCH_SIZES}
      for _ in range(repeats):
        for b in BATCH_SIZES:
          for s in runners:  # interleaved: a slow moment of the machine hits every system alike
            results[(s, b)].append(_time(runners[s][b], inputs[b], warmup=3, budget_s=budget_s,
                                         max_calls=max_calls))
      rows = []
      for b in BATCH_SIZES:
        base = statistics.median(r["p50"] for r in results[("jax (jit)", b)])
        for s, make in found.items():
          if isinstance(make, str):
            rows.append([b, s, make, "", "", "", ""])
            continue
          p50 = statistics.median(r["p50"] for r in results[(s, b)])
          p99 = statistics.median(r["p99"] for r in results[(s, b)])
          rate = statistics.median(r["throughput"] for r in results[(s, b)])
          rows.append([b, s, f"{p50:.3f}", f"{p99:.3f}", f"{rate:,.0f}", f"{base / p50:.2f}x", f"{diffs[s]:.1e}"])
      shape = " x ".join(str(d) for d in ex.inputs[0].shape)
      sections.append(f"### {name} ({MODELS[name]}{':smoke' if quick else ''}): {params / 1e6:.2f}M parameters, "
                      f"input {ex.inputs[0].dtype}[batch, {shape}]\n\n"
                      + table(["batch", "system", "p50 ms", "p99 ms", "examples/s", "p50 speed-up vs JAX",
                               "max abs diff vs JAX"], rows))
  if not tf:
    notes.append("TensorFlow/LiteRT rows need the `tf` extra: run this section with a Python that has it.")
  header = (f"Inference from Python, numpy in and out; median over {repeats} interleaved repeat(s) of up to "
            f"{max_calls} calls ({budget_s:g} s) per system and batch size. onnxruntime and LiteRT use "
            f"{threads} threads (all cores); JAX uses XLA:CPU's default thread pool.\n"
            f"Machine: {machine()}.\n")
  return "\n\n".join([header, *notes, *sections])
