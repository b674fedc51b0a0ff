"""TF SavedModel through jax2tf (native serialization): a `serving_default` signature, dynamic batch.

    saved_model/   tf.saved_model.load(...).signatures["serving_default"](image=x) -> {"logits": ...}

The model is embedded as StableHLO (an `XlaCallModule` op) lowered for the
platforms cpu and cuda; the weights are TF variables of the SavedModel. Needs
the `tf` extra; TensorFlow is imported only here, when this format is used.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from research.export.model import Exportable

DIR = "saved_model"
SIGNATURE = "serving_default"
PLATFORMS = ("cpu", "cuda")


def import_tf():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's start-up chatter (CPU features, oneDNN)
  import tensorflow as tf

  return tf


def _poly(shape: tuple[int, ...]) -> str:
  return "(" + ", ".join(["b", *map(str, shape)]) + ")"


def save(ex: Exportable, path: Path, *, platforms: tuple[str, ...] = PLATFORMS) -> None:
  """Writes the SavedModel of `ex` to `path`."""
  tf = import_tf()
  from jax.experimental import jax2tf

  converted = jax2tf.convert(ex.apply, polymorphic_shapes=[None, *(_poly(s.shape) for s in ex.inputs)],
                             with_gradient=False, native_serialization_platforms=tuple(platforms))
  module = tf.Module()
  module.params = [tf.Variable(w, trainable=False, name=f"w{i:04d}") for i, w in enumerate(ex.weights)]
  signature = [tf.TensorSpec([None, *s.shape], tf.dtypes.as_dtype(s.dtype), name=s.name) for s in ex.inputs]

  @tf.function(autograph=False, input_signature=signature)
  def serve(*inputs):
    return dict(zip(ex.output_names, converted(module.params, *inputs)))

  module.serve = serve
  tf.saved_model.save(module, str(path), signatures={SIGNATURE: serve})


def export(ex: Exportable, out: Path, *, platforms: tuple[str, ...] = PLATFORMS) -> dict:
  save(ex, out / DIR, platforms=platforms)
  files = sorted(p.relative_to(out).as_posix() for p in (out / DIR).rglob("*") if p.is_file())
  return {"files": files, "path": DIR, "signature": SIGNATURE, "platforms": list(platforms), "dynamic_batch": True,
          "inputs": [s.name for s in ex.inputs], "outputs": ex.output_names,
          "runtime": f"tf.saved_model.load(...).signatures[{SIGNATURE!r}]"}


def load(out: Path, artifact: dict):
  tf = import_tf()
  signature = tf.saved_model.load(str(out / artifact["path"])).signatures[artifact["signature"]]

  def run(*inputs):
    result = signature(**{n: tf.constant(x) for n, x in zip(artifact["inputs"], inputs)})
    return [np.asarray(result[n]) for n in artifact["outputs"]]

  return run
