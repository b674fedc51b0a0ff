"""A model served from its export directory: verified, preprocessed as in training, run in one runtime.

    model = Predictor.load("runs/mnist_mlp/export", backend="onnx")   # or "jax" (the StableHLO export)
    result = model.predict({"image": pixels})   # {"predictions", "probabilities", "labels", "label_names"}

With `buckets` (the server gives the JAX backend 1, 2, 4, ... up to its largest batch), every model call is
padded to the next bucket size and `warm_up()` compiles each one, so no request waits on a compile for a
batch size it is the first to send; a batch over the largest bucket runs in chunks of it.

Loading checks every file's sha256 against manifest.json (a changed, missing or
unlisted file refuses the model). The manifest's preprocessing is rebuilt with
the training code itself (research/data/ops.py): its ops with their parameters,
fitted state (e.g. a tokenizer) from `assets/`, and the cleaning steps that
rewrite each example (text normalization; row filters such as `dedupe` only
applied to datasets). Nothing else is read: no workdir, dataset or network.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np

from research.errors import ConfigError, InputError
from research.serve import inputs as inputs_lib

BACKENDS = {"onnx": "onnx", "jax": "stablehlo"}  # backend -> the export format it runs


@dataclasses.dataclass
class Predictor:
  directory: Path
  manifest: dict
  backend: str
  run: Callable[..., list[np.ndarray]]  # model inputs (numpy) -> outputs, in the manifest's order
  preprocess: Callable[[dict], dict]  # raw batch -> model inputs
  buckets: tuple[int, ...] = ()  # the batch sizes the model is called with (none: any size)

  @classmethod
  def load(cls, directory: str | Path, backend: str = "onnx", buckets: tuple[int, ...] = (),
           threads: int = 0) -> "Predictor":
    """Verifies and loads an export directory; raises VerifyError (a bad file) or ConfigError (no such artifact).
    `buckets`: increasing batch sizes to pad every model call to (see `warm_up`); `threads`: onnxruntime's threads
    per call (research.export.onnx.session; 0: its default)."""
    from research.export import manifest as manifest_lib
    from research.export.formats import FORMATS

    if backend not in BACKENDS:
      raise ConfigError(f"--backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    directory = Path(directory)
    manifest = manifest_lib.verify(directory)
    artifact = manifest.get("artifacts", {}).get(BACKENDS[backend])
    if artifact is None:
      raise ConfigError(f"{directory} has no {BACKENDS[backend]} artifact for the {backend} backend (it holds "
                        f"{', '.join(manifest.get('artifacts', {})) or 'none'}); export with --format "
                        f"{BACKENDS[backend]}, or choose another backend.")
    options = {"threads": threads} if backend == "onnx" else {}
    run = FORMATS.get(BACKENDS[backend]).load(directory, artifact, **options)
    buckets = tuple(buckets)
    return cls(directory, manifest, backend, padded(run, buckets) if buckets else run,
               preprocessing(manifest, directory), buckets)

  def warm_up(self) -> None:
    """Calls the model once per bucket: a JIT runtime compiles each batch size now, not on a request."""
    for size in self.buckets:
      self.run(*[np.zeros([size, *i["shape"][1:]], i["dtype"]) for i in self.manifest["inputs"]])

  @property
  def signature(self) -> dict[str, dict]:
    """The raw inputs a caller sends: name -> {"shape": [None, ...], "dtype": "uint8" | "str" | ...}."""
    pre = self.manifest["preprocessing"]
    return pre.get("raw_inputs") or {i["name"]: {"shape": i["shape"], "dtype": i["dtype"]}
                                     for i in self.manifest["inputs"]}

  @property
  def label_names(self) -> list[str] | None:
    return self.manifest.get("labels")

  def check(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
    """Raw inputs as the signature's arrays; InputError names a mismatch (shape, dtype, range, text length)."""
    return inputs_lib.check(self.signature, raw)

  def outputs(self, arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model's outputs for inputs that went through `check`."""
    batch = self.preprocess(arrays)
    model_inputs = [np.asarray(batch[i["name"]], dtype=i["dtype"]) for i in self.manifest["inputs"]]
    return self.run(*model_inputs)

  def predict(self, raw: dict[str, Any], *, checked: bool = False) -> dict:
    """Class predictions: {"predictions": int[N], "probabilities": float32[N, C], "labels": [name per example],
    "label_names": all C names}; a model whose output is not class scores gets {"outputs": {name: array}}.
    `checked`: `raw` already went through `check` (the server checks each request before batching)."""
    outputs = self.outputs(raw if checked else self.check(raw))
    spec = self.manifest["outputs"][0]
    if len(outputs) != 1 or len(spec["shape"]) != 2:  # not [N, classes] scores
      return {"outputs": {o["name"]: y for o, y in zip(self.manifest["outputs"], outputs)}}
    probabilities = softmax(outputs[0].astype(np.float32))
    predictions = probabilities.argmax(axis=-1)
    names = self.label_names
    return {"predictions": predictions, "probabilities": probabilities,
            "labels": [names[p] if names else str(p) for p in predictions], "label_names": names}


def bucket_sizes(largest: int) -> tuple[int, ...]:
  """1, 2, 4, ... below `largest`, then `largest`: at most twice the rows of a batch are ever computed."""
  return (*[1 << i for i in range(largest.bit_length()) if 1 << i < largest], largest)


def padded(run: Callable[..., list[np.ndarray]], buckets: tuple[int, ...]) -> Callable[..., list[np.ndarray]]:
  """`run` called only with batches of a bucket's size: rows of zeros pad a batch to the next bucket (rows do not
  affect each other) and are cut from the outputs; a batch over the largest bucket runs in chunks of it."""
  largest = buckets[-1]

  def call(*inputs: np.ndarray) -> list[np.ndarray]:
    rows = len(inputs[0])
    if rows > largest:
      chunks = [call(*(x[start:start + largest] for x in inputs)) for start in range(0, rows, largest)]
      return [np.concatenate(parts) for parts in zip(*chunks)]
    size = next(b for b in buckets if b >= rows)
    if size > rows:
      inputs = [np.concatenate([x, np.zeros((size - rows, *x.shape[1:]), x.dtype)]) for x in inputs]
    return [y[:rows] for y in run(*inputs)]

  return call


def softmax(logits: np.ndarray) -> np.ndarray:
  shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return shifted / shifted.sum(axis=-1, keepdims=True)


def preprocessing(manifest: dict, directory: Path) -> Callable[[dict], dict]:
  """The manifest's preprocessing as one function of a raw batch, built with the training code."""
  from research.data import ops
  from research.export.manifest import ASSETS
  from research.registry import OPS

  pre = manifest["preprocessing"]
  # Cleaners that are also per-batch ops rewrite each example (normalize_text); the others filter rows.
  rewrites = [(OPS.get(op["name"]), op["params"]) for op in pre.get("clean", {}).get("ops", []) if op["name"] in OPS]
  states = {f"{i}:{op['name']}": op["state"] for i, op in enumerate(pre["ops"]) if "state" in op}
  try:
    pipeline = ops.build(pre["pipeline"], assets_dir=directory / ASSETS, states=states)
  except ConfigError as e:
    raise ConfigError(f"{directory}: its preprocessing cannot be rebuilt ({e}).") from None

  def apply(batch: dict) -> dict:
    try:
      for fn, params in rewrites:
        batch = fn(batch, **params)
      return pipeline(batch)
    except (ValueError, TypeError) as e:  # what the checks let through and an op still refuses
      raise InputError(f"preprocessing refused the input: {e}") from None

  return apply
