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

Nothing here knows a model family. By default a model is exported as what
`model(x, train=False)` computes on `batch[config.data.input_key]` after the
config's preprocessing. A model whose deployable function is something else
(a language model's logits for a fixed context, a VAE's decoder) says so with
an optional method:

    def export_fn(self, batch: dict[str, np.ndarray]):  # preprocessed real test examples, numpy
      return fn, inputs                  # or (fn, inputs, output_names); output_names default ("logits",)

- `fn(model, *inputs)` computes the exported outputs (an array or a tuple of
  arrays) from the module, in inference mode; it is traced with the weights
  as arguments, so it must not close over the module's arrays;
- `inputs` is a dict {input name: array} derived from `batch`, with the same
  batch size: it names the inputs, fixes their per-example shapes and dtypes,
  and is what every artifact is checked on (so derive it from the real
  examples, e.g. `batch["tokens"][:, :self.block_size]`, or draw it with a
  fixed seed where the function's input is not data, e.g. a VAE's latents).

`export_fn` is called once per batch of real inputs the export checks; the
`fn` of the first call is the one exported.
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

from research.models.interface import abilities
from research.models.layers import fast_paths

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
  # a preprocessed batch dict -> the list of input arrays (default: [batch[config.data.input_key]])
  batch_inputs: Callable[[dict], list[np.ndarray]] | None = None

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

  def inputs_of(self, batch: dict) -> list[np.ndarray]:
    """The model's input arrays for a preprocessed batch dict."""
    if self.batch_inputs is not None:
      return [np.asarray(x) for x in self.batch_inputs(batch)]
    return [np.asarray(batch[self.config.data.input_key])]

  def real_inputs(self, split: str, sizes: Sequence[int], offset: int = 0) -> list[list[np.ndarray]]:
    """Consecutive batches of `sizes` real examples of `split`, as this exportable's input arrays."""
    return [self.inputs_of(b) for b in real_batches(self.config, split, sizes, offset, self.preprocess)]

  def inputs_from(self, arrays: dict[str, np.ndarray], sizes: Sequence[int]) -> list[list[np.ndarray]]:
    """Consecutive batches of `sizes` examples of raw `arrays`, as this exportable's input arrays."""
    return [self.inputs_of(b) for b in batches_from(arrays, sizes, self.preprocess)]

  def reference(self) -> Callable[..., list[np.ndarray]]:
    """The JAX function that every artifact is compared against: jitted, numpy in and out."""
    fn = jax.jit(self.apply)
    weights = jax.device_put(self.weights)  # once, not on every call
    return lambda *inputs: [np.asarray(y) for y in fn(weights, *inputs)]


def _as_tuple(outputs) -> tuple:
  return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def _call(module, *inputs):
  return module(*inputs, train=False)


def from_model(model, config: ml_collections.ConfigDict, meta: dict, sample: Sequence[np.ndarray],
               input_names: Sequence[str], output_names: Sequence[str] = ("logits",),
               preprocess: Callable | None = None, fn: Callable | None = None,
               batch_inputs: Callable[[dict], list[np.ndarray]] | None = None) -> Exportable:
  """Wraps an nnx.Module as `fn(model, *inputs)` (default `model(*inputs, train=False)`); `sample` sizes the
  input specs."""
  from flax import nnx

  fn = fn or _call
  graphdef, rng_state, state = nnx.split(model, nnx.RngState, ...)
  leaves, treedef = jax.tree.flatten(state)
  weights = [np.asarray(jax.device_get(leaf)) for leaf in leaves]
  rng_state = jax.device_get(rng_state)  # Unused in inference; kept so the graph merges back whole.

  def apply(weights, *inputs):
    module = nnx.merge(graphdef, rng_state, jax.tree.unflatten(treedef, list(weights)))
    # The fast formulations speed up training's backward pass only, and the strided-slice max-pool becomes a
    # dynamic gather under a dynamic batch, which TFLite cannot convert: artifacts use the reference ones.
    fast_paths.configure(module, False)
    return _as_tuple(fn(module, *inputs))

  specs = [InputSpec(name, tuple(int(d) for d in x.shape[1:]), str(np.dtype(x.dtype)))
           for name, x in zip(input_names, sample)]
  return Exportable(name=config.model.name, apply=apply, weights=weights, inputs=specs,
                    output_names=list(output_names), config=config, meta=meta, preprocess=preprocess,
                    batch_inputs=batch_inputs)


def export_spec(model, batch: dict) -> tuple[Callable, dict[str, np.ndarray], list[str]]:
  """`model.export_fn(batch)` checked and normalized to (fn, {name: array}, output names)."""
  result = abilities(model).export_fn(batch)
  if not isinstance(result, tuple) or len(result) not in (2, 3):
    raise TypeError(f"{type(model).__name__}.export_fn must return (fn, inputs) or (fn, inputs, output_names), "
                    f"got {type(result).__name__}")
  fn, inputs, outputs = (*result, ("logits",))[:3]
  if not callable(fn) or not isinstance(inputs, dict) or not inputs:
    raise TypeError(f"{type(model).__name__}.export_fn must return a callable fn(model, *inputs) and a non-empty "
                    f"dict of named input arrays")
  inputs = {str(k): np.asarray(v) for k, v in inputs.items()}
  return fn, inputs, [outputs] if isinstance(outputs, str) else list(outputs)


def for_model(model, config: ml_collections.ConfigDict, meta: dict, preprocess: Callable,
              examples: dict[str, np.ndarray]) -> Exportable:
  """The Exportable of a built or trained model: its `export_fn` if it has one, else `model(x, train=False)`.
  `examples` are raw examples (at least 2: real ones, or `research.data.spec.synthetic`) that fix the inputs."""
  batch = batches_from(examples, [2], preprocess)[0]
  if abilities(model).export_fn is None:
    return from_model(model, config, meta, [batch[config.data.input_key]], [config.data.input_key],
                      preprocess=preprocess)
  fn, inputs, outputs = export_spec(model, batch)
  names = list(inputs)

  def batch_inputs(b):
    _, arrays, _ = export_spec(model, b)
    return [arrays[n] for n in names]

  return from_model(model, config, meta, list(inputs.values()), names, outputs, preprocess=preprocess, fn=fn,
                    batch_inputs=batch_inputs)


def trained(workdir: str | Path, step: str | int | None = "latest"):
  """(model, config, checkpoint metadata) of a training run at `step` ("latest", "best" or a number)."""
  from research.train.experiment import trained_model

  absl = logging.getLogger("absl")
  level = absl.level
  absl.setLevel(logging.ERROR)  # Orbax warns that a read-only checkpoint manager is read-only.
  try:
    return trained_model(workdir, step)
  finally:
    absl.setLevel(level)


def from_workdir(workdir: str | Path, step: str | int | None = "latest",
                 examples: dict[str, np.ndarray] | None = None) -> Exportable:
  """The model of a training run at `step`; its inputs are fixed by `examples` (default: what sizes the model,
  research/train/experiment.py:model_examples, so no dataset is needed)."""
  from research.train import experiment

  model, config, meta = trained(workdir, step)
  if examples is None:
    examples = experiment.model_examples(config, workdir)
  return for_model(model, config, meta, experiment.preprocessor(config, workdir), examples)


def batches_from(arrays: dict[str, np.ndarray], sizes: Sequence[int], preprocess: Callable,
                 offset: int = 0) -> list[dict[str, np.ndarray]]:
  """Consecutive batches of `sizes` examples of `arrays`, preprocessed (dicts); they wrap around short arrays."""
  n = len(next(iter(arrays.values())))
  batches, start = [], offset
  for size in sizes:
    index = np.arange(start, start + size) % n
    batches.append({k: np.asarray(v) for k, v in preprocess({k: v[index] for k, v in arrays.items()}).items()})
    start += size
  return batches


def real_batches(config: ml_collections.ConfigDict, split: str, sizes: Sequence[int], offset: int = 0,
                 preprocess: Callable | None = None) -> list[dict[str, np.ndarray]]:
  """Consecutive batches of `sizes` examples of the real `split`, cleaned and preprocessed as in training."""
  from research.train import experiment

  return batches_from(experiment.load_split(config, split), sizes, preprocess or ops_only(config), offset)


def ops_only(config: ml_collections.ConfigDict) -> Callable:
  """The config's preprocessing without fitted state (for pipelines with no fitted op)."""
  from research.data import ops

  return ops.build(config.data.preprocess)


def real_inputs(config: ml_collections.ConfigDict, split: str, sizes: Sequence[int], offset: int = 0,
                preprocess: Callable | None = None) -> list[list[np.ndarray]]:
  """Like `real_batches`, each batch as the list [batch[config.data.input_key]] (a model called on its data).

  For an Exportable (which may define its own inputs, see `export_fn`) use `Exportable.real_inputs`.
  """
  return [[b[config.data.input_key]] for b in real_batches(config, split, sizes, offset, preprocess)]


def labeled_inputs(config: ml_collections.ConfigDict, split: str, limit: int | None = None,
                   preprocess: Callable | None = None, arrays: dict[str, np.ndarray] | None = None,
                   ) -> tuple[list[np.ndarray], np.ndarray] | None:
  """(inputs, labels) of the first `limit` (default all) examples of `split` (or of `arrays`, already loaded),
  cleaned and preprocessed as in training; None without labels."""
  from research.train import experiment

  label_key = config.data.label_key
  arrays = experiment.load_split(config, split) if arrays is None else arrays
  if label_key not in arrays:
    return None
  arrays = {k: v[:limit] for k, v in arrays.items()}
  batch = (preprocess or ops_only(config))(arrays)
  return [np.asarray(batch[config.data.input_key])], np.asarray(arrays[label_key])
