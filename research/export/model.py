"""A trained model as an exporter sees it: a pure function of input arrays, plus its weights.

Every format starts from an `Exportable`:

- `apply(weights, *inputs) -> outputs` is a pure JAX function; `weights` is a
  flat list of arrays (the model's variables, RNG state excluded). A flat list
  is what `jax.export` and TF tracking can serialize: NNX states keyed by
  integers (lists of layers) cannot be.
- `__call__(*inputs)` is the same function with the weights bound: what ONNX
  and TFLite bake in as constants.
- `inputs` names each input with its per-example shape and dtype; the batch
  dimension is always leading and dynamic.

Nothing here knows a model family: a model is whatever `model(x, train=False)`
computes on `batch[config.data.input_key]` after the config's preprocessing.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

BATCH = "batch"  # The name of the dynamic batch dimension in every artifact.


@dataclasses.dataclass(frozen=True)
class InputSpec:
  name: str
  shape: tuple[int, ...]  # per example: the batch dimension is left out
  dtype: str

  def to_json(self) -> dict:
    return {"name": self.name, "shape": [None, *self.shape], "dtype": self.dtype}


@dataclasses.dataclass
class Exportable:
  name: str
  apply: Callable[..., tuple]  # apply(weights, *inputs) -> tuple of outputs
  weights: list[np.ndarray]
  inputs: list[InputSpec]
  output_names: list[str]
  config: ml_collections.ConfigDict
  meta: dict = dataclasses.field(default_factory=dict)
  preprocess: Callable | None = None  # the run's preprocessing (fitted ops read their state from the workdir)

  def __call__(self, *inputs):
    return self.apply(self.weights, *inputs)

  def input_structs(self, batch: int | str | None = None) -> list[jax.ShapeDtypeStruct]:
    """ShapeDtypeStructs of the inputs at `batch`: an int, or None for one symbolic batch dimension."""
    if batch is None:
      (batch,) = jax.export.symbolic_shape(BATCH)
    return [jax.ShapeDtypeStruct((batch, *s.shape), jnp.dtype(s.dtype)) for s in self.inputs]

  def weight_structs(self) -> list[jax.ShapeDtypeStruct]:
    return [jax.ShapeDtypeStruct(w.shape, w.dtype) for w in self.weights]

  def output_structs(self, batch: int | None = None) -> list[jax.ShapeDtypeStruct]:
    return list(jax.eval_shape(self, *self.input_structs(batch)))

  def reference(self) -> Callable[..., list[np.ndarray]]:
    """The JAX function that every artifact is compared against: jitted, numpy in and out."""
    fn = jax.jit(self.apply)
    weights = jax.device_put(self.weights)  # once, not on every call
    return lambda *inputs: [np.asarray(y) for y in fn(weights, *inputs)]


def _as_tuple(outputs) -> tuple:
  return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def from_model(model, config: ml_collections.ConfigDict, meta: dict, sample: Sequence[np.ndarray],
               input_names: Sequence[str], output_names: Sequence[str] = ("logits",),
               preprocess: Callable | None = None) -> Exportable:
  """Wraps an nnx.Module called as `model(*inputs, train=False)`; `sample` sizes the input specs."""
  from flax import nnx

  graphdef, rng_state, state = nnx.split(model, nnx.RngState, ...)
  leaves, treedef = jax.tree.flatten(state)
  weights = [np.asarray(jax.device_get(leaf)) for leaf in leaves]
  rng_state = jax.device_get(rng_state)  # Unused in inference; kept so the graph merges back whole.

  def apply(weights, *inputs):
    module = nnx.merge(graphdef, rng_state, jax.tree.unflatten(treedef, list(weights)))
    return _as_tuple(module(*inputs, train=False))

  specs = [InputSpec(name, tuple(int(d) for d in x.shape[1:]), str(np.dtype(x.dtype)))
           for name, x in zip(input_names, sample)]
  return Exportable(name=config.model.name, apply=apply, weights=weights, inputs=specs,
                    output_names=list(output_names), config=config, meta=meta, preprocess=preprocess)


def from_workdir(workdir: str | Path, step: str | int | None = "latest") -> Exportable:
  """The model of a training run at `step` ("latest", "best" or a number)."""
  from research.train.experiment import trained_model

  absl = logging.getLogger("absl")
  level = absl.level
  absl.setLevel(logging.ERROR)  # Orbax warns that a read-only checkpoint manager is read-only.
  try:
    model, config, meta = trained_model(workdir, step)
  finally:
    absl.setLevel(level)
  preprocess = preprocessor(config, workdir)
  sample = real_inputs(config, "test", [2], preprocess=preprocess)[0]
  return from_model(model, config, meta, sample, [config.data.input_key], preprocess=preprocess)


def preprocessor(config: ml_collections.ConfigDict, workdir: str | Path | None = None) -> Callable:
  """The run's preprocessing function of a batch dict, as training applied it."""
  from research.data import ops
  from research.train import experiment

  if workdir is not None and hasattr(experiment, "preprocessor"):  # fitted ops: state kept in the workdir
    return experiment.preprocessor(config, workdir)
  return ops.build(config.data.preprocess)


def real_inputs(config: ml_collections.ConfigDict, split: str, sizes: Sequence[int], offset: int = 0,
                preprocess: Callable | None = None) -> list[list[np.ndarray]]:
  """Consecutive batches of `sizes` examples of the real `split`, preprocessed as in training.

  Each batch is a list of input arrays (one per model input). Batches wrap
  around the split if it is shorter than their total.
  """
  from research.data import get_split

  arrays = get_split(config.data.name, split)
  n = len(next(iter(arrays.values())))
  preprocess = preprocess or preprocessor(config)
  batches, start = [], offset
  for size in sizes:
    index = np.arange(start, start + size) % n
    batch = preprocess({k: v[index] for k, v in arrays.items()})
    batches.append([np.asarray(batch[config.data.input_key])])
    start += size
  return batches


def labeled_inputs(config: ml_collections.ConfigDict, split: str, limit: int | None = None,
                   preprocess: Callable | None = None) -> tuple[list[np.ndarray], np.ndarray] | None:
  """(inputs, labels) of the first `limit` (default all) examples of `split`, preprocessed; None without labels."""
  from research.data import get_split

  label_key = config.data.get("label_key", "label")
  arrays = get_split(config.data.name, split)
  if label_key not in arrays:
    return None
  arrays = {k: v[:limit] for k, v in arrays.items()}
  batch = (preprocess or preprocessor(config))(arrays)
  return [np.asarray(batch[config.data.input_key])], np.asarray(arrays[label_key])
