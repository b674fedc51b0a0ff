"""Checkpoints: an Orbax CheckpointManager holding the TrainState and the data position.

On disk, `WORKDIR/checkpoints/<step>/` has two items::

  state/  the TrainState as a nested dict with string keys only
          (params/hidden/0/kernel, opt_state/1/0/mu/..., step, rng);
  meta/   JSON: {"format_version", "step", "data": {"epoch", "index"}}.

Orbax writes each step into a temporary directory and renames it when complete,
so a half-written checkpoint is never listed. Saves are asynchronous: `save`
returns once device arrays are copied to host memory.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

from research import atomic
from research.errors import CheckpointError, brief

FORMAT_VERSION = 2  # 1: variables were stored with a trailing `/value` (nnx.State); unreadable now
BEST_FILE = "best.json"


def key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  raise TypeError(f"unsupported pytree key {key!r}")


def to_string_tree(tree) -> dict:
  """Any pytree -> nested dict of its leaves with string keys only (the on-disk layout)."""
  nested: dict = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    node = nested
    names = [key_name(k) for k in path]
    for name in names[:-1]:
      node = node.setdefault(name, {})
    node[names[-1]] = leaf
  return nested


def from_string_tree(nested: dict, like):
  """Inverse of `to_string_tree`: rebuilds a pytree with the structure of `like`."""
  leaves = []
  for path, _ in jax.tree_util.tree_flatten_with_path(like)[0]:
    node = nested
    for key in path:
      node = node[key_name(key)]
    leaves.append(node)
  return jax.tree.unflatten(jax.tree.structure(like), leaves)


def abstract(tree):
  """Shapes, dtypes and shardings of `tree`: the target that restores onto the current devices."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpointer:
  """Saves every `every` steps (and when forced); keeps the last `keep` plus the best `keep_best`.

  With `best_metric` set (an eval metric name such as "accuracy"), checkpoints
  saved with eval metrics are ranked by it (`best_mode` "max" or "min"), the best
  `keep_best` are never deleted, and the best one is marked in `best.json`.
  """

  def __init__(self, directory: str | Path, *, every: int, keep: int, best_metric: str = "",
               best_mode: str = "max", keep_best: int = 1, read_only: bool = False):
    self.directory = Path(directory).absolute()
    self.every = every
    self.read_only = read_only
    self.best_metric, self.best_mode = best_metric, best_mode
    policies = [LatestN(keep)]
    if best_metric and keep_best > 0:
      policies.append(BestN(get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min", n=keep_best,
                            keep_checkpoints_without_metrics=False))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            create=not read_only, read_only=read_only, enable_async_checkpointing=True,
            cleanup_tmp_directories=not read_only,  # Leftovers of a killed save.
            preservation_policy=AnyPreservationPolicy(policies) if not read_only else None),
        item_names=("state", "meta"),
    )

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def due(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state, data_position: dict, *, force: bool = False,
           eval_metrics: dict[str, float] | None = None, progress: dict | None = None) -> bool:
    """Starts an async save if due (or forced); returns once device arrays are copied to host memory.

    `progress` is loop bookkeeping that must survive a restart (e.g. early-stopping counters).
    """
    if not (force or self.due(step)) or step in self.manager.all_steps():
      return False
    meta = {"format_version": FORMAT_VERSION, "step": step, "data": data_position, "eval": eval_metrics or {},
            "progress": progress or {}}
    saved = self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(to_string_tree(state)), meta=ocp.args.JsonSave(meta)),
        metrics=eval_metrics if self.best_metric and eval_metrics else None, force=True)
    if saved and self.best_metric and eval_metrics:
      self._mark_if_best(step, eval_metrics[self.best_metric])
    return saved

  def best(self) -> dict | None:
    """The marked best checkpoint: {"step", "metric", "mode", "value"}, or None."""
    try:
      return json.loads((self.directory / BEST_FILE).read_text())
    except (OSError, ValueError):
      return None

  def best_step(self) -> int | None:
    best = self.best()
    return int(best["step"]) if best else None

  def _mark_if_best(self, step: int, value: float) -> None:
    best = self.best()
    if best is not None:
      improved = value > best["value"] if self.best_mode == "max" else value < best["value"]
      if not improved:
        return
    atomic.write_text(self.directory / BEST_FILE, json.dumps(
        {"step": step, "metric": self.best_metric, "mode": self.best_mode, "value": value}))

  def restore(self, like, step: int | None = None, *, partial: bool = False) -> tuple[Any, dict] | None:
    """Restores `step` (default: the newest readable one) onto the shardings of `like`.

    `like` is the TrainState (or, with `partial=True`, any subset of its fields as
    a dict, e.g. {"params": ..., "model_state": ...}). Returns (restored, meta),
    or None if there are no checkpoints. A checkpoint that cannot be read is
    reported with its step and the reason, and the next older one is tried; if
    none can be read, raises with the list of what was tried.
    """
    steps = [step] if step is not None else sorted(self.steps(), reverse=True)
    target = abstract(to_string_tree(like))
    if partial:
      state_args = ocp.args.PyTreeRestore(item=target, partial_restore=True,
                                          restore_args=ocp.checkpoint_utils.construct_restore_args(target))
    else:
      state_args = ocp.args.StandardRestore(target)
    failures = []
    for s in steps:
      try:
        meta = dict(self.manager.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        if meta.get("format_version") != FORMAT_VERSION:  # read first: an old layout fails obscurely in Orbax
          raise ValueError(f"written in checkpoint format {meta.get('format_version')}; this version of "
                           f"research reads format {FORMAT_VERSION} (retrain, or use the version that wrote it)")
        if meta.get("step") != s:
          raise ValueError(f"bad metadata {meta!r}")
        restored = self.manager.restore(s, args=ocp.args.Composite(state=state_args))
        result = from_string_tree(restored["state"], like), meta
      except Exception as e:  # Orbax raises many types for damaged files; each is reported.
        reason = brief(e, 200)
        failures.append((s, reason))
        print(f"warning: checkpoint at step {s} in {self.directory} is unreadable ({reason}); "
              f"trying an older one.", file=sys.stderr)
        continue
      self._set_aside([failed for failed, _ in failures])
      return result
    if failures:
      tried = "\n  ".join(f"step {s}: {reason}" for s, reason in failures)
      raise CheckpointError(f"No readable checkpoint in {self.directory}. Tried:\n  {tried}\n"
                            f"Move the directory away to start from scratch.")
    return None

  def _set_aside(self, steps: list[int]) -> None:
    """Renames unreadable checkpoints newer than the one restored to `<step>.unreadable-<time>`.

    Nothing is deleted (the files stay for inspection), and the resumed run can
    write those steps again.
    """
    if not steps or self.read_only:  # Evaluation never changes a workdir.
      return
    if jax.process_index() != 0:
      self.manager.reload()
      return
    for s in steps:
      target = self.directory / f"{s}.unreadable-{int(time.time())}"
      (self.directory / str(s)).rename(target)
      print(f"warning: moved the unreadable checkpoint of step {s} to {target}.", file=sys.stderr)
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
