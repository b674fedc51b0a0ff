"""Checkpoints: an Orbax CheckpointManager holding the TrainState and the data position.

On disk, `WORKDIR/checkpoints/<step>/` has two items:
  state/  the TrainState as a nested dict with string keys only
          (params/hidden/0/kernel/value, opt_state/1/0/mu/..., step, rng);
  meta/   JSON: {"format_version", "step", "data": {"epoch", "index"}}.
Orbax writes each step into a temporary directory and renames it when complete,
so a half-written checkpoint is never listed. Saves are asynchronous: `save`
returns once device arrays are copied to host memory.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

FORMAT_VERSION = 1


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  raise TypeError(f"unsupported pytree key {key!r}")


def to_string_tree(tree) -> dict:
  """Any pytree -> nested dict of its leaves with string keys only (the on-disk layout)."""
  nested: dict = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    node = nested
    names = [_key_name(k) for k in path]
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
      node = node[_key_name(key)]
    leaves.append(node)
  return jax.tree.unflatten(jax.tree.structure(like), leaves)


def abstract(tree):
  """Shapes, dtypes and shardings of `tree`: the target that restores onto the current devices."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpointer:
  """Saves every `every` steps (and when forced), keeps the last `keep`, restores the newest readable."""

  def __init__(self, directory: str | Path, *, every: int, keep: int):
    self.directory = Path(directory).absolute()
    self.every = every
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True),
        item_names=("state", "meta"),
    )

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, data_position: dict, *, force: bool = False) -> bool:
    if not force and (self.every <= 0 or step % self.every):
      return False
    if step in self.manager.all_steps():
      return False
    meta = {"format_version": FORMAT_VERSION, "step": step, "data": data_position}
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(to_string_tree(state)), meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, like, step: int | None = None) -> tuple[Any, dict] | None:
    """Restores `step` (default: the newest readable one) onto the shardings of `like`.

    Returns (state, meta), or None if there are no checkpoints. A checkpoint that
    cannot be read is reported and skipped; if none can be read, raises.
    """
    steps = [step] if step is not None else sorted(self.steps(), reverse=True)
    failures = []
    for s in steps:
      try:
        restored = self.manager.restore(s, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract(to_string_tree(like))), meta=ocp.args.JsonRestore()))
        return from_string_tree(restored["state"], like), dict(restored["meta"])
      except Exception as e:  # Orbax raises many types for damaged files; each is reported.
        reason = f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        failures.append(f"step {s}: {reason}")
        print(f"warning: checkpoint at step {s} in {self.directory} is unreadable ({reason}); "
              f"trying an older one.", file=sys.stderr)
    if failures:
      raise RuntimeError(f"No readable checkpoint in {self.directory}. Tried:\n  " + "\n  ".join(failures) +
                         "\nMove the directory away to start from scratch.")
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
