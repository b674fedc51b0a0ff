"""Checkpoints: an Orbax CheckpointManager holding the TrainState and the data position.

On disk, `WORKDIR/checkpoints/<step>/` has two items::

  state/  the TrainState as a nested dict with string keys only
          (params/hidden/0/kernel, opt_state/1/0/mu/..., step, rng);
  meta/   JSON: {"format_version", "step", "data": {"epoch", "index"}, "checksums": {path: xxh3-64}, ...}.

Every array's bytes are hashed (xxh3-64, ~10 GB/s: faster than the host copy
Orbax makes of the same arrays) when the save starts, and the hashes are
committed with the checkpoint in `meta`. Restore recomputes them, so bit rot in
array data is caught like any other damage: the checkpoint is set aside and the
next older one is tried.

Orbax writes each step into a temporary directory and renames it when complete,
so a half-written checkpoint is never listed. Saves are asynchronous: `save`
returns once device arrays are copied to host memory.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import xxhash
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

from research import atomic
from research.errors import CheckpointError, brief

FORMAT_VERSION = 2  # 1: variables were stored with a trailing `/value` (nnx.State); unreadable now
BEST_FILE = "best.json"
UNREADABLE = re.compile(r"\d+\.unreadable-\d+")  # a damaged checkpoint set aside by `restore`
ORBAX_TEMPORARY = ".orbax-checkpoint-tmp"  # a save in progress, or one a killed run left behind
# Parameters renamed when their layout changed (same shape, another meaning), so that a checkpoint holding the old
# name cannot restore: its failure is then reported with this reason, and nothing is set aside as damaged.
# (The qkv kernel's columns were [q | k | v] of all heads; they are each head's q, k, v in turn since.)
RETIRED_PATHS = ((re.compile(r"/(attn|attention)/qkv/"), "written before the attention's qkv kernel was laid out by "
                  "head"),)


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


def checksums(nested: dict, prefix: str = "") -> dict[str, str]:
  """{"params/hidden/0/kernel": xxh3-64 hex, ...} of a string tree's arrays, from one host copy of each.

  Arrays split across devices (not replicated) are not hashed: their bytes are not all on this host."""
  sums = {}
  for name, value in nested.items():
    if isinstance(value, dict):
      sums.update(checksums(value, f"{prefix}{name}/"))
      continue
    if isinstance(value, jax.Array):
      if not value.is_fully_replicated:
        continue
      value = value.addressable_data(0)
    sums[f"{prefix}{name}"] = xxhash.xxh3_64_hexdigest(np.ascontiguousarray(value))
  return sums


def verify(nested: dict, expected: dict[str, str]) -> None:
  """Raises if an array of `nested` differs from the checksum recorded when it was saved."""
  for path, actual in checksums(nested).items():
    if path in expected and expected[path] != actual:
      raise ValueError(f"array {path} does not match its checksum (its bytes changed on disk since the save)")


class _RetiredLayout(ValueError):
  """A checkpoint of a layout this version no longer reads (RETIRED_PATHS): not damage, so nothing is set aside."""


def failed_step(error: BaseException, default: int) -> int:
  """The step whose save failed: an asynchronous save's error surfaces at a later save or wait, and names the
  step's temporary directory."""
  found = re.search(r"/(\d+)" + re.escape(ORBAX_TEMPORARY), str(error))
  return int(found.group(1)) if found else default


def abstract(tree):
  """Shapes, dtypes and shardings of `tree`: the target that restores onto the current devices."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class _StateHandler(ocp.StandardCheckpointHandler):
  """Orbax's handler of the `state` item, whose arrays are written without replica-parallel slicing when there is
  one process. Replica-parallel saving spreads a replicated array's writing over the processes; within one process
  it only slices each array into one piece per device, and each new slice shape costs a compile: 2.4 s at the
  first save of a small model on 8 CPU devices, against 0.03 s without (docs/performance.md). The files are the
  same either way."""

  def __init__(self):
    super().__init__()
    array_handler = copy.copy(ocp.type_handlers.get_type_handler(jax.Array))
    # Private attributes of orbax 0.11 (pyproject's range); where they have changed, orbax's default stays.
    if jax.process_count() == 1 and hasattr(array_handler, "_use_replica_parallel") and hasattr(self, "_impl"):
      array_handler._use_replica_parallel = False
      registry = ocp.type_handlers.create_type_handler_registry(
          *[(t, array_handler if t is jax.Array else ocp.type_handlers.get_type_handler(t))
            for t in ocp.type_handlers.supported_types()])
      self._impl = ocp.PyTreeCheckpointHandler(type_handler_registry=registry)

  @classmethod
  def typestr(cls) -> str:
    return ocp.StandardCheckpointHandler.typestr()  # what each checkpoint's metadata names: orbax's own handler


def handlers() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  """The checkpoint's items and the arguments each is saved and restored with; the state's handler registered last,
  so that it is the one each checkpoint's metadata names."""
  registry, meta, state = ocp.handlers.DefaultCheckpointHandlerRegistry(), ocp.JsonCheckpointHandler(), _StateHandler()
  registry.add("meta", ocp.args.JsonSave, meta)
  registry.add("meta", ocp.args.JsonRestore, meta)
  registry.add("state", ocp.args.PyTreeRestore, ocp.PyTreeCheckpointHandler())  # a partial restore
  registry.add("state", ocp.args.StandardSave, state)
  registry.add("state", ocp.args.StandardRestore, state)
  return registry


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
    self.manager = self._listing(lambda: ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            create=not read_only, read_only=read_only, enable_async_checkpointing=True,
            cleanup_tmp_directories=not read_only,  # Leftovers of a killed save.
            preservation_policy=AnyPreservationPolicy(policies) if not read_only else None),
        handler_registry=handlers(),
    ))

  def _listing(self, list_steps):
    """`list_steps()`, which reads every step's metadata; a reader lists again when a live run deleted a step
    (checkpoint.keep) between seeing its directory and reading its metadata."""
    for _ in range(9):
      try:
        return list_steps()
      except FileNotFoundError:
        if not self.read_only:
          raise
    return list_steps()

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
    nested = to_string_tree(state)
    meta = {"format_version": FORMAT_VERSION, "step": step, "data": data_position, "eval": eval_metrics or {},
            "progress": progress or {}, "checksums": checksums(nested)}
    saved = self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(nested), meta=ocp.args.JsonSave(meta)),
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

  def foreign_entries(self) -> list[str]:
    """Entries of the checkpoint directory that are neither checkpoints nor the library's own files."""
    if not self.directory.is_dir():
      return []
    odd = []
    for entry in self.directory.iterdir():
      ours = ((entry.name.isdigit() and entry.is_dir()) or entry.name == BEST_FILE
              or UNREADABLE.fullmatch(entry.name) or ORBAX_TEMPORARY in entry.name)
      if not ours:
        odd.append(entry.name + ("/" if entry.is_dir() else " (a file)" if entry.name.isdigit() else ""))
    return sorted(odd)

  def layout_difference(self, like, step: int) -> list[str]:
    """How the arrays saved at `step` differ from `like`'s (paths missing, added or reshaped); [] if the same
    or if the checkpoint's metadata cannot be read (restore then reports it)."""
    try:
      saved = self._saved_shapes(step)
    except Exception:  # noqa: BLE001  (a damaged checkpoint: restore names the problem)
      return []
    wanted = {"/".join(key_name(k) for k in path): tuple(np.shape(leaf))
              for path, leaf in jax.tree_util.tree_flatten_with_path(like)[0]}
    differ = [f"{k}: saved {saved[k]}, now {wanted[k]}" for k in sorted(set(saved) & set(wanted))
              if saved[k] != wanted[k]]
    differ += [f"{k}: not in the checkpoint" for k in sorted(set(wanted) - set(saved))]
    return differ + [f"{k}: only in the checkpoint" for k in sorted(set(saved) - set(wanted))]

  def _saved_shapes(self, step: int) -> dict[str, tuple[int, ...]]:
    """{path: shape} of the arrays saved at `step`, from the checkpoint's metadata (no array is read)."""
    metadata = ocp.PyTreeCheckpointer().metadata(self.directory / str(step) / "state")
    metadata = getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)
    return {"/".join(key_name(k) for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(metadata)[0]}

  def _retired(self, step: int) -> str | None:
    """Why this version cannot read the arrays saved at `step` (RETIRED_PATHS), or None."""
    try:
      paths = self._saved_shapes(step)
    except Exception:  # noqa: BLE001  (damage: the restore's own error names it)
      return None
    for path in paths:
      for pattern, reason in RETIRED_PATHS:
        if pattern.search(path):
          return f"{reason} ({path})"
    return None

  def restore(self, like, step: int | None = None, *, partial: bool = False) -> tuple[Any, dict] | None:
    """Restores `step` (default: the newest readable one) onto the shardings of `like`.

    `like` is the TrainState (or, with `partial=True`, any subset of its fields as
    a dict, e.g. {"params": ..., "model_state": ...}). Returns (restored, meta),
    or None if there are no checkpoints. A checkpoint that cannot be read is
    reported with its step and the reason, and the next older one is tried; if
    none can be read, raises with the list of what was tried. A reader
    (`read_only`) of a live run skips, silently, a checkpoint that the run
    deleted while it was being read, and takes the newest one left.
    """
    odd = [] if self.read_only else self.foreign_entries()
    if odd:
      raise CheckpointError(f"{self.directory} holds {', '.join(odd[:5])}, which {'is' if len(odd) == 1 else 'are'} "
                            f"not a checkpoint; move {'it' if len(odd) == 1 else 'them'} out of the directory "
                            f"(nothing was trained or deleted).")
    target = abstract(to_string_tree(like))
    if partial:
      state_args = ocp.args.PyTreeRestore(item=target, partial_restore=True,
                                          restore_args=ocp.checkpoint_utils.construct_restore_args(target))
    else:
      state_args = ocp.args.StandardRestore(target)
    failures, tried = [], set()
    while True:
      candidates = [s for s in ([step] if step is not None else sorted(self.steps(), reverse=True)) if s not in tried]
      if not candidates:
        break
      s = candidates[0]
      tried.add(s)
      try:
        result = self._read(s, like, state_args)
      except _RetiredLayout as e:  # Older steps were written by the same or an older version: stop here.
        raise CheckpointError(f"The checkpoint of step {s} in {self.directory} was {e}; retrain in a new workdir, "
                              f"or use the version of research that wrote it.") from None
      except Exception as e:  # Orbax raises many types for damaged files; each is reported.
        if self.read_only and self._deleted_meanwhile(s):
          if step is not None:
            raise CheckpointError(f"The checkpoint of step {s} in {self.directory} was deleted by the run "
                                  f"writing it (checkpoint.keep) while it was read; choose a newer step: "
                                  f"{self.steps()}.") from None
          continue
        reason = brief(e, 200)
        failures.append((s, reason))
        print(f"warning: checkpoint at step {s} in {self.directory} is unreadable ({reason}); "
              f"trying an older one.", file=sys.stderr)
        continue
      self._set_aside([failed for failed, _ in failures])
      return result
    if failures:
      tried_text = "; ".join(f"step {s}: {reason}" for s, reason in failures)
      raise CheckpointError(f"No readable checkpoint in {self.directory} (tried {tried_text}). Move the directory "
                            f"away to start from scratch.")
    return None

  def _read(self, step: int, like, state_args) -> tuple[Any, dict]:
    meta = dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
    if meta.get("format_version") != FORMAT_VERSION:  # read first: an old layout fails obscurely in Orbax
      raise ValueError(f"written in checkpoint format {meta.get('format_version')}; this version of "
                       f"research reads format {FORMAT_VERSION} (retrain, or use the version that wrote it)")
    if meta.get("step") != step:
      raise ValueError(f"bad metadata {meta!r}")
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(state=state_args))
      # A partial restore leaves what the checkpoint lacks as the target's placeholder, without an error.
      missing = [path for path, leaf in jax.tree_util.tree_flatten_with_path(restored["state"])[0]
                 if isinstance(leaf, jax.ShapeDtypeStruct)]
      if missing:
        raise ValueError(f"it holds no {'/'.join(key_name(k) for k in missing[0])}")
    except Exception:
      retired = self._retired(step)  # Orbax's error for a renamed parameter names no parameter
      if retired:
        raise _RetiredLayout(retired) from None
      raise
    verify(restored["state"], meta.get("checksums", {}))
    return from_string_tree(restored["state"], like), meta

  def _deleted_meanwhile(self, step: int) -> bool:
    """Whether `step` is gone because a live run's keep policy removed it (not damage)."""
    self._listing(self.manager.reload)
    return step not in self.manager.all_steps() and not (self.directory / str(step)).exists()

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
