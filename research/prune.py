"""Global magnitude pruning as an optax transformation: the mask lives in the optimizer state.

    config.prune = dict(sparsity=0.8, schedule="gradual", start_step=0, end_step=3000, every=100)

`research.optim.build` appends `magnitude_pruning(...)` to the optimizer chain
when `config.prune.sparsity > 0`. Its state (the update count and one boolean
mask per parameter) is part of `TrainState.opt_state`, so it is checkpointed,
restored and resumed exactly like Adam's moments.

What is pruned: every weight matrix or convolution kernel (`prunable`: a
parameter named `kernel` with two or more dimensions: `nnx.Linear`,
`nnx.Conv`, `nnx.ConvTranspose`, the Linear layers inside LSTM/GRU cells and
attention). Biases, norm scales, embedding and position tables are never
pruned. The selection is global: the `k = round(sparsity * n)` smallest
magnitudes among all `n` prunable weights of the model, so layers end up with
different sparsities.

When: `schedule="one_shot"` prunes to `sparsity` at update `start_step`;
`"gradual"` raises the sparsity from 0 at `start_step` to `sparsity` at
`end_step` along the cubic schedule of Zhu & Gupta (2017),
`s(t) = sparsity * (1 - (1 - (t - start) / (end - start))**3)`, recomputing the
mask every `every` updates (and at `end_step`). Weights pruned once stay pruned.

How the weights become and stay exactly zero: this transformation rewrites the
final update of each step as `where(mask, update, -param)`. `param + (-param)`
is exactly 0 in floating point, so a newly pruned weight is 0 after its pruning
step, and every later update of a pruned weight is `-0.0`, which keeps it 0.
Adam's moments of pruned weights keep running but never reach them.

Steps are counted in applied updates (a step skipped by `nan_policy="skip"`
does not count). One-shot pruning of a trained run with fine-tuning:

    python scripts/train.py --config configs/mnist_mlp.py --workdir runs/mnist_mlp_p90 \\
        --config.init_from=runs/mnist_mlp --config.prune.sparsity=0.9
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from research.errors import ConfigError

SCHEDULES = ("one_shot", "gradual")


class PruneState(NamedTuple):
  count: jax.Array  # int32 scalar: updates applied so far
  mask: Any  # the params' structure: bool arrays for prunable leaves (True = kept), scalar True elsewhere


def _name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_name(path) -> str:
  """'hidden/0/kernel' for a tree path (the trailing `.value` of an nnx.Variable dropped)."""
  names = [_name(k) for k in path]
  if names and names[-1] == "value":
    names = names[:-1]
  return "/".join(names)


def prunable(path, leaf) -> bool:
  """A weight matrix or convolution kernel: named `kernel`, with at least two dimensions."""
  return path_name(path).rsplit("/", 1)[-1] == "kernel" and jnp.ndim(leaf) >= 2


def _prunable_leaves(params) -> tuple[list, list[bool], Any]:
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  return [leaf for _, leaf in flat], [prunable(path, leaf) for path, leaf in flat], treedef


def count_prunable(params) -> int:
  leaves, which, _ = _prunable_leaves(params)
  return int(sum(np.size(leaf) for leaf, p in zip(leaves, which) if p))


def global_mask(params, sparsity, previous=None):
  """The kept-weights mask (True = kept) that prunes the `round(sparsity * n)` smallest magnitudes.

  Global over all prunable leaves of `params`; other leaves get a scalar True.
  Weights already pruned in `previous` are pruned first (ties broken by
  position), so a mask never loses a pruned weight. `sparsity` may be traced.
  """
  leaves, which, treedef = _prunable_leaves(params)
  old = (jax.tree.leaves(previous) if previous is not None else [None] * len(leaves))
  chosen = [(leaf, m) for leaf, m, p in zip(leaves, old, which) if p]
  if not chosen:
    return jax.tree.unflatten(treedef, [jnp.ones((), bool) for _ in leaves])
  scores = []
  for leaf, m in chosen:
    score = jnp.abs(leaf).astype(jnp.float32).ravel()
    if m is not None:
      score = jnp.where(jnp.ravel(m), score, -1.0)
    scores.append(score)
  scores = jnp.concatenate(scores)
  n = scores.shape[0]
  k = jnp.round(jnp.asarray(sparsity, jnp.float32) * n).astype(jnp.int32)
  order = jnp.argsort(scores, stable=True)
  keep = jnp.zeros((n,), bool).at[order].set(jnp.arange(n) >= k)
  out, offset = [], 0
  for leaf, p in zip(leaves, which):
    if p:
      out.append(keep[offset:offset + leaf.size].reshape(leaf.shape))
      offset += leaf.size
    else:
      out.append(jnp.ones((), bool))
  return jax.tree.unflatten(treedef, out)


def target_sparsity(count, sparsity: float, schedule: str, start_step: int, end_step: int):
  """The sparsity the schedule asks for at update `count` (0 before `start_step`)."""
  count = jnp.asarray(count, jnp.float32)
  if schedule == "one_shot":
    return jnp.where(count >= start_step, sparsity, 0.0)
  progress = jnp.clip((count - start_step) / max(end_step - start_step, 1), 0.0, 1.0)
  return jnp.where(count >= start_step, sparsity * (1.0 - (1.0 - progress) ** 3), 0.0)


def is_update_step(count, schedule: str, start_step: int, end_step: int, every: int):
  """Whether the mask is recomputed at update `count`."""
  if schedule == "one_shot":
    return count == start_step
  inside = (count >= start_step) & (count <= end_step)
  return inside & (((count - start_step) % every == 0) | (count == end_step))


def magnitude_pruning(sparsity: float, *, schedule: str = "one_shot", start_step: int = 0, end_step: int = 0,
                      every: int = 100) -> optax.GradientTransformation:
  """Appended last to an optimizer chain: prunes by global magnitude and keeps pruned weights exactly 0."""
  check(dict(sparsity=sparsity, schedule=schedule, start_step=start_step, end_step=end_step, every=every))

  def init(params):
    leaves, which, treedef = _prunable_leaves(params)
    mask = [jnp.ones(jnp.shape(leaf) if p else (), bool) for leaf, p in zip(leaves, which)]
    return PruneState(count=jnp.zeros((), jnp.int32), mask=jax.tree.unflatten(treedef, mask))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("magnitude_pruning needs the parameters: call tx.update(grads, opt_state, params).")
    target = target_sparsity(state.count, sparsity, schedule, start_step, end_step)
    mask = jax.lax.cond(is_update_step(state.count, schedule, start_step, end_step, every),
                        lambda: global_mask(params, target, state.mask), lambda: state.mask)
    updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p).astype(u.dtype), updates, params, mask)
    return updates, PruneState(count=state.count + 1, mask=mask)

  return optax.GradientTransformation(init, update)


def check(cfg) -> None:
  """Raises ConfigError for a `config.prune` the pruning cannot run with."""
  sparsity, schedule, start, end, every = (cfg[k] for k in ("sparsity", "schedule", "start_step", "end_step", "every"))
  if not 0.0 <= sparsity < 1.0:
    raise ConfigError(f"prune.sparsity must be in [0, 1) (the fraction of weights set to 0), got {sparsity}.")
  if schedule not in SCHEDULES:
    raise ConfigError(f"prune.schedule={schedule!r}; choose one of {', '.join(SCHEDULES)}.")
  if start < 0:
    raise ConfigError(f"prune.start_step must be >= 0, got {start}.")
  if schedule == "gradual":
    if end <= start:
      raise ConfigError(f"prune.schedule='gradual' raises the sparsity from prune.start_step={start} to "
                        f"prune.end_step={end}: set end_step > start_step (e.g. --config.prune.end_step=2000).")
    if every < 1:
      raise ConfigError(f"prune.every must be >= 1 (updates between mask recomputations), got {every}.")


def from_config(config) -> optax.GradientTransformation | None:
  """The pruning transformation of `config.prune`, or None when its sparsity is 0."""
  cfg = config.prune
  check(cfg)
  if cfg.sparsity <= 0.0:
    return None
  return magnitude_pruning(cfg.sparsity, schedule=cfg.schedule, start_step=cfg.start_step, end_step=cfg.end_step,
                           every=cfg.every)


def find_state(opt_state) -> PruneState | None:
  """The PruneState inside an optimizer state (e.g. `TrainState.opt_state`), or None."""
  found = []

  def visit(node):
    if isinstance(node, PruneState):
      found.append(node)
      return True
    return False

  jax.tree.map(lambda _: None, opt_state, is_leaf=visit)
  return found[0] if found else None


def sparsity_report(params) -> dict:
  """{"sparsity": fraction of prunable weights that are exactly 0, "zeros", "prunable", "layers": {path: fraction}}."""
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  layers, zeros, total = {}, 0, 0
  for path, leaf in flat:
    if prunable(path, leaf):
      array = np.asarray(jax.device_get(leaf))
      z = int(np.sum(array == 0))
      layers[path_name(path)] = z / array.size
      zeros, total = zeros + z, total + array.size
  return {"sparsity": zeros / total if total else 0.0, "zeros": zeros, "prunable": total, "layers": layers}
