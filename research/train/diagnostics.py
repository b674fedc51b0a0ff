"""What the TensorBoard hooks look at, computed apart from the train step, only at their periods.

The train step returns three numbers (research/train/step.py); gradients, updates and augmented inputs are
never returned by it. At a hook's period `make(...)` gives jitted functions that recompute them from the
current state and this step's batch, with the step's own augmentation and dropout keys: the gradient of the
loss at the current parameters, and the update the optimizer would apply with it (its state is not changed).
Histograms and per-layer norms are computed on the device, so only a few numbers per parameter come back.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp

from research import parallel
from research.models.layers.reductions import sum_of_squares
from research.train.step import forward

BINS = 30  # TensorBoard's histogram buckets per tensor


def flat(tree) -> dict[str, jax.Array]:
  """{"layers/0/kernel": leaf, ...} of a nested dict of arrays."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): leaf for path, leaf in leaves}


def histogram(x: jax.Array) -> dict[str, jax.Array]:
  """min, max, sum, sum of squares and BINS equal-width bucket counts (with their upper limits) of `x`."""
  x = x.astype(jnp.float32).ravel()
  low, high = jnp.min(x), jnp.max(x)
  width = jnp.where(high > low, (high - low) / BINS, 1.0)
  index = jnp.clip(((x - low) / width).astype(jnp.int32), 0, BINS - 1)
  return {"min": low, "max": high, "sum": jnp.sum(x), "sum_squares": jnp.sum(x * x),
          "bucket_limits": low + width * jnp.arange(1, BINS + 1, dtype=jnp.float32),
          "bucket_counts": jnp.zeros(BINS, jnp.int32).at[index].add(1)}


def layer_norms(tree) -> dict[str, jax.Array]:
  """The L2 norm of each layer's parameters together (leaves grouped by their path without the last key)."""
  groups: dict[str, list] = {}
  for path, leaf in flat(tree).items():
    groups.setdefault(path.rpartition("/")[0] or path, []).append(leaf)
  return {layer: jnp.sqrt(sum(sum_of_squares(x) for x in leaves)) for layer, leaves in groups.items()}


def _step_keys(state):
  """The dropout and augmentation keys the step that produced `state` used (research/train/step.py, strategy auto)."""
  return jax.random.split(jax.random.fold_in(state.rng, state.step - 1))


def _gradients(state, batch, *, graphdef, tx, input_key, label_smoothing, augment):
  rng, augment_rng = _step_keys(state)
  if augment is not None:
    batch = augment(batch, augment_rng)

  def loss_fn(params):
    return forward(graphdef, params, state.model_state, batch, input_key=input_key, train=True, rng=rng,
                   label_smoothing=label_smoothing)[0]

  grads = jax.grad(loss_fn)(state.params)
  updates, _ = tx.update(grads, state.opt_state, state.params)
  trees = {"params": state.params, "grads": grads, "updates": updates}
  return {"grad_norm": layer_norms(grads), "update_norm": layer_norms(updates),
          "histograms": {f"{kind}/{path}": histogram(x) for kind, tree in trees.items() for path, x in flat(tree).items()}}


def _inputs(state, batch, *, augment, input_key, count):
  if augment is not None:
    batch = augment(batch, _step_keys(state)[1])
  return batch[input_key][:count]


def make(graphdef, tx, mesh, *, input_key: str, label_smoothing: float = 0.0, augment: Callable | None = None,
         count: int = 16) -> tuple[Callable, Callable]:
  """Returns jitted (gradients(state, batch) -> {"grad_norm": {layer: norm}, "update_norm": {...}, "histograms":
  {"params/<path>" | "grads/<path>" | "updates/<path>": histogram}}, inputs(state, batch) -> the first `count`
  training inputs after augmentation)."""
  repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  jit = partial(jax.jit, in_shardings=(None, data), out_shardings=repl)  # the state as it is placed (sharding.py)
  return (jit(partial(_gradients, graphdef=graphdef, tx=tx, input_key=input_key, label_smoothing=label_smoothing,
                      augment=augment)),
          jit(partial(_inputs, augment=augment, input_key=input_key, count=count)))
