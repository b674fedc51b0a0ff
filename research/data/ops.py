"""Preprocessing ops, chosen in the config as a pipeline string.

`config.data.preprocess = "normalize(0.1307, 0.3081)|flatten"` applies each op
in turn to a batch (a dict of numpy arrays), on the host. An op is registered
under its name and called as `op(batch, *args, **kwargs)`.

A *fitted* op learns something from the train split first (per-channel
statistics, a tokenizer). It is registered as a `FittedOp` whose `fit` returns a
JSON-able state (and may write files, e.g. `tokenizer.json`, into the assets
directory, normally the workdir). The states of a pipeline are kept in
`ASSETS_DIR/preprocess_state.json`, so a resumed run, `evaluate.py` and the
exporters apply exactly what training applied, without fitting again.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from research import atomic
from research.errors import ConfigError
from research.registry import OPS

Batch = dict[str, np.ndarray]
STATE_FILE = "preprocess_state.json"


class FittedOp(Protocol):
  def fit(self, arrays: Batch, assets_dir: Path, *args, **kwargs) -> dict[str, Any]:
    """Learns the op's state from the whole train split; may write files into `assets_dir`."""

  def __call__(self, batch: Batch, state: dict[str, Any], assets_dir: Path, *args, **kwargs) -> Batch:
    """Applies the op to a batch with its fitted state."""


@OPS.register("normalize")
def normalize(batch: Batch, mean=0.0, std=1.0, max_value: float = 255.0, key: str = "image") -> Batch:
  """Scales `key` to [0, 1] by `max_value`, then standardizes: (x - mean) / std, per channel if sequences."""
  x = batch[key].astype(np.float32) / np.float32(max_value)
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  return {**batch, key: (x - mean) / std}


@OPS.register("flatten")
def flatten(batch: Batch, key: str = "image") -> Batch:
  """Flattens every dimension after the batch one: [B, H, W, C] -> [B, H*W*C]."""
  x = batch[key]
  return {**batch, key: x.reshape(x.shape[0], -1)}


class Standardize:
  """`standardize`: scales `key` by 1/max_value, then (x - mean) / std per channel, with the mean and
  std of the train split (computed once, saved in the workdir)."""

  def fit(self, arrays: Batch, assets_dir: Path, key: str = "image", max_value: float = 255.0) -> dict:
    x = arrays[key]
    axes = tuple(range(x.ndim - 1))  # every axis but the channels
    total = np.zeros(x.shape[-1], np.float64)
    squares = np.zeros(x.shape[-1], np.float64)
    for start in range(0, len(x), 4096):  # chunks: float64 copies of a whole split can be large
      chunk = x[start:start + 4096].astype(np.float64) / max_value
      total += chunk.sum(axes)
      squares += (chunk ** 2).sum(axes)
    count = np.prod([x.shape[a] for a in axes])
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean ** 2, 1e-12))
    return {"mean": mean.tolist(), "std": std.tolist()}

  def __call__(self, batch: Batch, state: dict, assets_dir: Path, key: str = "image",
               max_value: float = 255.0) -> Batch:
    return normalize(batch, state["mean"], state["std"], max_value=max_value, key=key)


OPS.register("standardize")(Standardize())


def parse_op(text: str) -> tuple[str, tuple, dict]:
  try:
    node = ast.parse(text.strip(), mode="eval").body
  except SyntaxError:
    raise ConfigError(f"Cannot parse preprocessing op {text!r}; write it as name or name(arg, key=value).") from None
  if isinstance(node, ast.Name):
    return node.id, (), {}
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
    try:
      args = tuple(ast.literal_eval(a) for a in node.args)
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    except ValueError:
      raise ConfigError(f"Preprocessing op {text!r}: arguments must be literals.") from None
    return node.func.id, args, kwargs
  raise ConfigError(f"Cannot parse preprocessing op {text!r}; write it as name or name(arg, key=value).")


def parse(spec: str) -> list[tuple[str, tuple, dict]]:
  """'op1(args)|op2' -> [(name, args, kwargs), ...]; unknown names fail here, at start-up."""
  steps = [parse_op(text) for text in filter(None, (part.strip() for part in spec.split("|")))]
  for name, _, _ in steps:
    OPS.get(name)
  return steps


def is_fitted(entry) -> bool:
  return hasattr(entry, "fit")


def fit_states(spec: str, arrays: Batch | None, assets_dir: str | Path | None) -> dict[str, Any]:
  """The fitted ops' states: read from `assets_dir` if saved there, else fitted on `arrays` and saved."""
  steps = [(f"{i}:{name}", OPS.get(name), args, kwargs) for i, (name, args, kwargs) in enumerate(parse(spec))]
  fitted = [(key, entry, args, kwargs) for key, entry, args, kwargs in steps if is_fitted(entry)]
  if not fitted:
    return {}
  if assets_dir is None:
    raise ConfigError(f"Preprocessing {spec!r} has fitted ops ({', '.join(k for k, *_ in fitted)}): "
                      f"pass the workdir that holds their state.")
  path = Path(assets_dir) / STATE_FILE
  states = json.loads(path.read_text()) if path.exists() else {}
  missing = [(key, entry, args, kwargs) for key, entry, args, kwargs in fitted if key not in states]
  if missing and arrays is None:
    raise ConfigError(f"{path} lacks the fitted state of {', '.join(k for k, *_ in missing)}; "
                      f"it is written when training starts.")
  for key, entry, args, kwargs in missing:
    states[key] = entry.fit(arrays, Path(assets_dir), *args, **kwargs)
  if missing:
    atomic.write_text(path, json.dumps(states, indent=2, sort_keys=True))
  return states


def _bind(entry: FittedOp, state: dict, assets_dir: Path) -> Callable:
  def op(batch: Batch, *args, **kwargs) -> Batch:
    return entry(batch, state, assets_dir, *args, **kwargs)

  return op


def build(spec: str, *, fit_on: Batch | None = None, assets_dir: str | Path | None = None,
          states: dict[str, Any] | None = None) -> Callable[[Batch], Batch]:
  """Turns 'op1(args)|op2' into one function of a batch.

  Fitted ops take their state from `assets_dir` (fitting it on `fit_on`, the
  train split, the first time), or from `states` ({"<index>:<op>": state}, as an
  export's manifest lists them) with their files in `assets_dir`. Pipelines
  without fitted ops need neither.
  """
  states = fit_states(spec, fit_on, assets_dir) if states is None else states
  steps = []
  for i, (name, args, kwargs) in enumerate(parse(spec)):
    entry = OPS.get(name)
    fn = _bind(entry, states[f"{i}:{name}"], Path(assets_dir)) if is_fitted(entry) else entry
    steps.append((fn, args, kwargs))

  def apply(batch: Batch) -> Batch:
    for fn, args, kwargs in steps:
      batch = fn(batch, *args, **kwargs)
    return batch

  return apply


_parse_op = parse_op  # Old name, still used by research/export/manifest.py.
