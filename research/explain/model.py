"""A trained nnx model as the pure functions research/explain differentiates: f(state, x, *context) -> logits."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

BATCH = 512  # examples per call when predicting


def pure(model: nnx.Module, method: str = "__call__") -> tuple[Callable, nnx.State]:
  """(f, state): f(state, x, *context) = model.<method>(x, *context, train=False), traced anew from `state`, so
  gradients and other weights (e.g. re-initialized ones) pass through it."""
  graphdef, state = nnx.split(model)

  def f(state, x, *context):
    return getattr(nnx.merge(graphdef, state), method)(x, *context, train=False)

  return f, state


def logits(f: Callable, state, x: np.ndarray, *context: np.ndarray) -> np.ndarray:
  """f's float32 logits of x, BATCH examples per jitted call."""
  run = jax.jit(f)
  parts = [np.asarray(run(state, x[i:i + BATCH], *(c[i:i + BATCH] for c in context)), np.float32)
           for i in range(0, len(x), BATCH)]
  return np.concatenate(parts)


def probabilities(logits: np.ndarray) -> np.ndarray:
  shifted = np.exp(logits - logits.max(-1, keepdims=True))
  return shifted / shifted.sum(-1, keepdims=True)
