"""Jitted train and eval steps for the two data-parallel strategies.

`auto`: `jax.jit` over global arrays with NamedShardings; XLA inserts the
gradient all-reduce. `pmap`: per-device code under `jax.shard_map` with an
explicit `pmean` of gradients, the way `jax.pmap` works. Both compute the same
numbers. The state argument is donated, so its buffers are reused in place.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from research import losses, metrics, parallel
from research.errors import ConfigError
from research.models.interface import abilities
from research.models.layers.reductions import sum_of_squares
from research.train import accumulation
from research.train.state import TrainState

STRATEGIES = ("auto", "pmap")
# The train step's metrics, as one float32 vector in this order: one host transfer per step, not one per
# metric (each costs ~30 us of Python; three were ~3% of a 3 ms MLP step).
STEP_METRICS = ("loss", "grad_norm", "nonfinite")


def named(step_metrics) -> dict[str, float]:
  """A fetched metric vector as {"loss": ..., "grad_norm": ..., "nonfinite": 0.0 or 1.0}."""
  return dict(zip(STEP_METRICS, np.asarray(step_metrics).tolist()))


def forward(graphdef, params, model_state, batch, *, input_key: str, train: bool, rng=None,
            label_smoothing: float = 0.0):
  """Returns (mean loss, metric sums, new model state) of one batch.

  A model that declares a `loss(batch, *, train, rngs)` (research/models/interface.py) (e.g. a language model or
  a VAE) defines its own objective; any other model is a classifier of
  `batch[input_key]` scored with softmax cross-entropy against `batch["label"]`.
  """
  model = nnx.merge(graphdef, params, model_state, copy=True)  # fresh Variables: BatchNorm mutates them under the trace
  rngs = nnx.Rngs(dropout=rng) if rng is not None else None
  if (own_loss := abilities(model).loss) is not None:
    loss, sums = own_loss(batch, train=train, rngs=rngs)
  else:
    logits = model(batch[input_key], train=train, rngs=rngs).astype(jnp.float32)  # (bfloat16 under mixed precision)
    per_example = losses.softmax_cross_entropy(logits, batch["label"], label_smoothing)
    mask = batch.get("mask")
    loss = losses.masked_mean(per_example, mask)
    sums = metrics.classification_sums(logits, batch["label"], per_example, mask)
  return loss, sums, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))


def _pmean_floats(tree, axis):
  return jax.tree.map(lambda x: jax.lax.pmean(x, axis) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def all_finite(tree) -> jax.Array:
  """Whether every floating-point value in `tree` is finite (one fused pass over each leaf)."""
  leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def global_norm(tree) -> jax.Array:
  """The L2 norm of all leaves (see `sum_of_squares` for its cost on XLA:CPU)."""
  return jnp.sqrt(sum(sum_of_squares(x) for x in jax.tree.leaves(tree)))


def _train_step(state: TrainState, batch, *, graphdef, tx, input_key, label_smoothing, augment=None, axis=None,
                rollback=False, grad_accum_steps=1):
  rng = jax.random.fold_in(state.rng, state.step)
  if axis is not None:  # Each device draws its own dropout mask and augmentation.
    rng = jax.random.fold_in(rng, jax.lax.axis_index(axis))
  rng, augment_rng = jax.random.split(rng)
  if augment is not None:
    batch = augment(batch, augment_rng)

  def loss_fn(params, model_state, batch, rng):
    loss, sums, model_state = forward(graphdef, params, model_state, batch, input_key=input_key, train=True,
                                      rng=rng, label_smoothing=label_smoothing)
    count = sums.get("count", jnp.asarray(len(batch[next(iter(batch))]), jnp.float32))  # weighs microbatches
    return loss, (jax.lax.stop_gradient(count), model_state)

  loss, grads, model_state = accumulation.accumulate(jax.value_and_grad(loss_fn, has_aux=True), state.params,
                                                     state.model_state, batch, rng, grad_accum_steps)
  if axis is not None:
    grads, loss, model_state = jax.lax.pmean(grads, axis), jax.lax.pmean(loss, axis), _pmean_floats(model_state, axis)
  grad_norm = global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  old = (state.params, state.opt_state, state.model_state)

  def update(_):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = (optax.apply_updates(state.params, updates), opt_state, model_state)
    return new, all_finite(new)  # a finite gradient can still overflow a parameter or a moment (lr=1e39)

  # A non-finite loss or gradient is never applied. A lax.cond, not an elementwise select of the old state: to
  # keep the old values for a select, XLA copied Adam's moments every step (the MLP step ran ~10% slower).
  new, applied_finite = jax.lax.cond(finite, update, lambda _: (old, jnp.array(True)), None)
  finite = finite & applied_finite
  if rollback:  # nan_policy='skip' pays for that select to undo an update that overflowed; 'stop' never saves it
    new = jax.tree.map(lambda n, o: jnp.where(applied_finite, n, o), new, old)
  params, opt_state, model_state = new
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state,
                            skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32))
  return new_state, jnp.stack([loss, grad_norm, ~finite]).astype(jnp.float32)  # STEP_METRICS


def _eval_step(state: TrainState, batch, *, graphdef, input_key, axis=None):
  _, sums, _ = forward(graphdef, state.params, state.model_state, batch, input_key=input_key, train=False)
  return jax.lax.psum(sums, axis) if axis is not None else sums


def _on(mesh, fn):
  """`fn` traced with `mesh` as the current mesh, so models can constrain activations to it (sharding.py)."""
  def traced(*args):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args)
  traced.__name__ = traced.__qualname__ = getattr(fn, "func", fn).__name__  # profiles and caches name the step
  return traced


def make_steps(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh, *,
               strategy: str, input_key: str, label_smoothing: float = 0.0,
               augment: Callable | None = None, rollback: bool = False,
               grad_accum_steps: int = 1, state_sharding=None) -> tuple[Callable, Callable]:
  """Returns jitted (train_step(state, batch) -> (state, metric vector), eval_step(state, batch) -> sums).

  `state_sharding` (the `auto` strategy): the TrainState's NamedShardings (research/sharding.py), kept by the
  step; default: copied to every device. Activations are kept split like the batch at block boundaries.

  `augment(batch, rng) -> batch` (see research.data.augment) runs inside the train step only. A step whose loss,
  gradient or updated state is not finite is flagged in its metrics; with `rollback` (nan_policy='skip') an
  update that overflowed the state is also undone (a non-finite loss or gradient is never applied either way).
  `grad_accum_steps` > 1 runs each device's rows as that many microbatches (research/train/accumulation.py).
  """
  train = partial(_train_step, graphdef=graphdef, tx=tx, input_key=input_key, label_smoothing=label_smoothing,
                  augment=augment, rollback=rollback, grad_accum_steps=grad_accum_steps)
  evaluate = partial(_eval_step, graphdef=graphdef, input_key=input_key)
  if strategy == "auto":
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    placed = repl if state_sharding is None else state_sharding
    return (jax.jit(_on(mesh, train), in_shardings=(placed, data), out_shardings=(placed, repl), donate_argnums=0),
            jax.jit(_on(mesh, evaluate), in_shardings=(placed, data), out_shardings=repl))
  if strategy == "pmap":
    axis = parallel.DATA
    # check_vma=False: with it on, autodiff already sums the gradients of the replicated parameters over the
    # devices, and the explicit pmean below would leave them `devices` times too large.
    per_device = lambda fn: jax.shard_map(partial(fn, axis=axis), mesh=mesh, in_specs=(P(), P(axis)),
                                           out_specs=P(), check_vma=False)
    return jax.jit(per_device(train), donate_argnums=0), jax.jit(per_device(evaluate))
  raise ConfigError(f"Unknown parallel.strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")
