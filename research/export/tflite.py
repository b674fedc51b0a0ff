"""TFLite, converted from the jax2tf SavedModel; run back in the LiteRT interpreter.

    model.tflite   signature "serving_default": image -> logits

By default the batch dimension stays dynamic (resize the input before
`allocate_tensors`). `batch=N` fixes it, which lets the converter and XNNPACK
plan memory once and is much faster for on-device batch-1 inference; the parity
check then feeds inputs in slices of N (the last one padded). A fixed batch is
converted from the model traced at that batch (jax2tf without polymorphic
shapes), not from the dynamic-batch SavedModel: the StableHLO then holds no
shape computations, and the TFLite graph no SHAPE/RESHAPE chains (measured: the
MNIST CNN ran several times faster, docs/benchmarks/inference.md). Needs the `tf` extra (TensorFlow for the
converter, ai-edge-litert for the interpreter).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from research.export import tf as tf_format
from research.export.model import Exportable

FILE = "model.tflite"


def convert(saved_model: Path, *, batch: int | None = None, int8: bool = False) -> bytes:
  """TFLite flatbuffer of a SavedModel's serving signature; `int8`: dynamic-range int8 weights."""
  tf = tf_format.import_tf()
  if batch is None:
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), signature_keys=[tf_format.SIGNATURE])
  else:
    loaded = tf.saved_model.load(str(saved_model))
    signature = loaded.signatures[tf_format.SIGNATURE]
    inputs = signature.structured_input_signature[1]
    names = list(inputs)
    specs = [tf.TensorSpec([batch, *inputs[n].shape[1:]], inputs[n].dtype, name=n) for n in names]
    fixed = tf.function(lambda *xs: signature(**dict(zip(names, xs))), input_signature=specs)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fixed.get_concrete_function()], loaded)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if int8:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  return converter.convert()


def convert_fixed(ex: Exportable, batch: int, *, int8: bool = False) -> bytes:
  """TFLite flatbuffer of `ex` traced at a fixed `batch` (jax2tf native serialization without polymorphism)."""
  tf = tf_format.import_tf()
  from jax.experimental import jax2tf

  converted = jax2tf.convert(ex.apply, with_gradient=False, native_serialization_platforms=("cpu",))
  module = tf.Module()
  module.params = [tf.Variable(w, trainable=False, name=f"w{i:04d}") for i, w in enumerate(ex.weights)]
  specs = [tf.TensorSpec([batch, *s.shape], tf.dtypes.as_dtype(s.dtype), name=s.name) for s in ex.inputs]

  @tf.function(autograph=False, input_signature=specs)
  def serve(*inputs):
    return dict(zip(ex.output_names, converted(module.params, *inputs)))

  converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], module)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if int8:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  return converter.convert()


def flatbuffer(ex: Exportable, out: Path, *, batch: int | None = None, int8: bool = False) -> tuple[bytes, str]:
  """(TFLite bytes, what they were converted from): a fixed batch from `ex` itself, a dynamic one from the
  SavedModel exported in this run (or one made for the purpose)."""
  if batch is not None:
    return convert_fixed(ex, batch, int8=int8), f"jax2tf at batch {batch}"
  saved_model = out / tf_format.DIR
  with tempfile.TemporaryDirectory() as tmp:
    if not (saved_model / "saved_model.pb").exists():  # not exported in this run: make one to convert
      saved_model = Path(tmp) / tf_format.DIR
      tf_format.save(ex, saved_model)
    return convert(saved_model, int8=int8), "saved_model"


def export(ex: Exportable, out: Path, *, batch: int | None = None) -> dict:
  content, source = flatbuffer(ex, out, batch=batch)
  (out / FILE).write_bytes(content)
  return {"files": [FILE], "path": FILE, "batch": batch, "dynamic_batch": batch is None,
          "inputs": [s.name for s in ex.inputs], "outputs": ex.output_names, "converted_from": source,
          "runtime": "ai_edge_litert.interpreter.Interpreter (XNNPACK)"}


def interpreter(path: Path, threads: int | None = None):
  from ai_edge_litert.interpreter import Interpreter

  from research import console

  with console.native_output_to_log():  # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" to fd 2
    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()  # (where the delegate is created)
  return interp


def runner(path: Path, input_names: list[str], output_names: list[str], batch: int | None = None,
           threads: int | None = None):
  """A function of numpy inputs -> list of outputs; a fixed-batch model is fed in slices of `batch`."""
  interp = interpreter(path, threads)
  signature = interp.get_signature_runner()

  def run_once(inputs):
    result = signature(**dict(zip(input_names, inputs)))
    return [np.asarray(result[n]) for n in output_names]

  if batch is None:
    return lambda *inputs: run_once(inputs)

  def run_sliced(*inputs):
    n, pieces = len(inputs[0]), []
    for start in range(0, n, batch):
      chunk = [x[start:start + batch] for x in inputs]
      pad = batch - len(chunk[0])
      if pad:  # repeat the last example to fill the fixed batch; its outputs are dropped
        chunk = [np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) for x in chunk]
      pieces.append([y[:batch - pad] for y in run_once(chunk)])
    return [np.concatenate(ys) for ys in zip(*pieces)]

  return run_sliced


def load(out: Path, artifact: dict):
  return runner(out / artifact["path"], artifact["inputs"], artifact["outputs"], artifact["batch"])
