"""Metrics as sums of counts, so they accumulate exactly across batches and devices.

A batch contributes a dict of sums (e.g. loss_sum, correct, count); batches are
added key by key; `summarize` divides at the end. Never a mean of means.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def classification_sums(logits: jax.Array, labels: jax.Array, per_example_loss: jax.Array,
                        mask: jax.Array | None = None) -> dict[str, jax.Array]:
  if mask is None:
    mask = jnp.ones(labels.shape, jnp.float32)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return {"loss_sum": jnp.sum(per_example_loss * mask), "correct": jnp.sum(correct * mask),
          "count": jnp.sum(mask)}


def add(a: dict | None, b: dict) -> dict:
  return b if a is None else jax.tree.map(jnp.add, a, b)


def summarize(sums: dict) -> dict[str, float]:
  """Sums -> means, as Python floats: each `<name>_sum` becomes `<name>` (divided by `count`), and
  `correct` becomes `accuracy`. A model may define its own `summarize(sums)` (e.g. adding perplexity)."""
  count = max(float(sums["count"]), 1.0)
  out = {k[:-len("_sum")]: float(v) / count for k, v in sums.items() if k.endswith("_sum")}
  if "correct" in sums:
    out["accuracy"] = float(sums["correct"]) / count
  return out
