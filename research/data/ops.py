"""Preprocessing ops, chosen in the config as a pipeline string.

`config.data.preprocess = "normalize(0.1307, 0.3081)|flatten"` applies each op
in turn to a batch (a dict of numpy arrays). An op is registered under its name
and called as `op(batch, *args, **kwargs)`.
"""

from __future__ import annotations

import ast
from typing import Callable

import numpy as np

from research.errors import ConfigError
from research.registry import OPS

Batch = dict[str, np.ndarray]


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


def _parse_op(text: str) -> tuple[str, tuple, dict]:
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


def build(spec: str) -> Callable[[Batch], Batch]:
  """Turns 'op1(args)|op2' into one function of a batch. Unknown op names fail here, at start-up."""
  steps = []
  for text in filter(None, (part.strip() for part in spec.split("|"))):
    name, args, kwargs = _parse_op(text)
    steps.append((OPS.get(name), args, kwargs))

  def apply(batch: Batch) -> Batch:
    for fn, args, kwargs in steps:
      batch = fn(batch, *args, **kwargs)
    return batch

  return apply
