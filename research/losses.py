"""Losses: pure functions of (model outputs, batch) returning per-example values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from research.registry import LOSSES


@LOSSES.register("cross_entropy")
def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels and optional label smoothing."""
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def masked_mean(values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  if mask is None:
    return jnp.mean(values)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)
