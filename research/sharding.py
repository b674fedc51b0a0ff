"""Where each array of the train state lives on the mesh: rules from parameter paths to PartitionSpecs.

A rule is `(regex, spec)`. The regex must match a parameter's whole path, written with slashes as in a
checkpoint (`blocks/0/attn/qkv_heads/kernel`); the first rule that matches decides. Its spec has one entry per
dimension, from the front: None (not split), a mesh axis ("tensor") or a tuple of axes. Then, unless the spec
names `fsdp` itself, FSDP takes the largest dimension that is still whole and that the fsdp axis divides (a
parameter that no dimension of fits stays whole on that axis). A spec of None keeps the parameter whole on
every axis. A parameter no rule matches gets FSDP alone.

`config.mesh.rules` are tried before the model family's defaults (`FAMILY_RULES`), so a config overrides them::

    config.mesh.rules = ((r"token_embed/embedding", None),  # keep the embedding whole on every device
                         (r"blocks/\\d+/fc/kernel", ("fsdp", "tensor")))

Optimizer state follows the parameters: a leaf whose path ends with a parameter's path (`1/0/mu/blocks/0/...`)
and has its shape is split like it; the rest (step counts) is copied to every device, as are the step, the rng
and the model's other state (e.g. BatchNorm statistics).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research.errors import ConfigError
from research.parallel import AXES, BATCH, FSDP

Rule = tuple[re.Pattern, Any]  # (compiled regex, spec tuple or None)

_COLUMNS = (None, "tensor")  # a kernel [in, out] split over its output units
_ROWS = ("tensor", None)  # a kernel [in, out] split over its input units
# Tensor parallelism, Megatron style: the first matmul of attention and of the MLP is split over its outputs
# (heads, hidden units), the second over its inputs, so each device computes its own heads and units and one
# all-reduce per block joins them. The fused qkv kernel's columns are laid out by head (split_heads in
# research/models/layers/attention_core.py), so with `tensor` dividing the heads each device's columns are whole
# heads. Everything else is split by FSDP alone.
FAMILY_RULES: dict[str, tuple[tuple[str, Any], ...]] = {
    "gpt": ((r"blocks/\d+/(attn/qkv_heads|fc)/kernel", _COLUMNS),
            (r"blocks/\d+/(attn/qkv_heads|fc)/bias", ("tensor",)),
            (r"blocks/\d+/(attn/proj|fc_out)/kernel", _ROWS)),
    "transformer": ((r"blocks/\d+/(attention/qkv_heads|mlp_in)/kernel", _COLUMNS),
                    (r"blocks/\d+/(attention/qkv_heads|mlp_in)/bias", ("tensor",)),
                    (r"blocks/\d+/(attention/out|mlp_out)/kernel", _ROWS)),
}


def _check_spec(spec, where: str):
  if spec is None:
    return None
  if isinstance(spec, str) or not isinstance(spec, Sequence):
    raise ConfigError(f"{where}: the spec {spec!r} is not a tuple with an entry per dimension (None, an axis or a "
                      f"tuple of axes), e.g. (None, 'tensor'); or None to keep the parameter whole.")
  entries = []
  for entry in spec:
    axes = (entry,) if entry is None or isinstance(entry, str) else tuple(entry)
    unknown = [a for a in axes if a is not None and a not in AXES]
    if unknown:
      raise ConfigError(f"{where}: {unknown[0]!r} is not a mesh axis; use {', '.join(AXES)} or None.")
    entries.append(entry if entry is None or isinstance(entry, str) else tuple(entry))
  return tuple(entries)


def parse_rules(rules) -> list[Rule]:
  """`config.mesh.rules` ((regex, spec) pairs; lists as read back from config.json) -> compiled rules."""
  parsed = []
  for i, rule in enumerate(rules or ()):
    where = f"mesh.rules[{i}]"
    if isinstance(rule, str) or not isinstance(rule, Sequence) or len(rule) != 2 or not isinstance(rule[0], str):
      raise ConfigError(f"{where}={rule!r} is not a (regex, spec) pair, e.g. (r'blocks/\\d+/fc/kernel', "
                        f"(None, 'tensor')).")
    try:
      pattern = re.compile(rule[0])
    except re.error as e:
      raise ConfigError(f"{where}: {rule[0]!r} is not a regular expression ({e}); fix the pattern.") from None
    parsed.append((pattern, _check_spec(rule[1], where)))
  return parsed


def rules(config) -> list[Rule]:
  """The config's own rules, then its model family's defaults."""
  return parse_rules(config.mesh.get("rules", ())) + parse_rules(FAMILY_RULES.get(config.model.name, ()))


def path_name(path) -> str:
  """A pytree key path as a checkpoint names it: `blocks/0/attn/qkv_heads/kernel`."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _axes_of(entry) -> tuple:
  return () if entry is None else (entry,) if isinstance(entry, str) else entry


def param_spec(name: str, shape: tuple[int, ...], mesh: Mesh, rule_list: list[Rule]) -> P:
  """The PartitionSpec of the parameter `name` of `shape` (see the module docstring)."""
  matched = next(((pattern.pattern, spec) for pattern, spec in rule_list if pattern.fullmatch(name)), None)
  source, spec = matched if matched else ("", ())
  if spec is None:
    return P()
  if len(spec) > len(shape):
    raise ConfigError(f"mesh.rules: {source!r} gives {name} (shape {shape}) a spec of {len(spec)} dimensions; "
                      f"give it at most {len(shape)}.")
  entries = list(spec) + [None] * (len(shape) - len(spec))
  used = [a for entry in entries for a in _axes_of(entry)]
  if FSDP not in used and mesh.shape[FSDP] > 1:  # (a dimension given only axes of size 1 is still whole)
    whole = [d for d, entry in enumerate(entries)
             if all(mesh.shape[a] == 1 for a in _axes_of(entry)) and shape[d] % mesh.shape[FSDP] == 0]
    if whole:
      entries[max(whole, key=lambda d: shape[d])] = FSDP  # the largest (the first of equals)
  for d, entry in enumerate(entries):
    ways = 1
    for axis in _axes_of(entry):
      ways *= mesh.shape[axis]
    if shape[d] % ways:
      raise ConfigError(f"mesh: {name} has shape {shape}; its dimension {d} ({shape[d]}) cannot be split "
                        f"{ways} ways over {entry!r} (rule {source!r}); choose mesh sizes that divide it, or a "
                        f"rule in config.mesh.rules that splits another dimension.")
  # Axes of size 1 are left out: the spec of a state on a one-axis mesh stays P() (replicated), as before.
  entries = [tuple(a for a in _axes_of(entry) if mesh.shape[a] > 1) for entry in entries]
  entries = [None if not axes else axes[0] if len(axes) == 1 else axes for axes in entries]
  while entries and entries[-1] is None:
    entries.pop()
  return P(*entries)


def state_shardings(state, mesh: Mesh, rule_list: list[Rule]):
  """The NamedShardings of a TrainState (or of its abstract shapes): a pytree like `state`."""
  placed = {}  # parameter path -> (spec, shape)

  def place(path, leaf):
    name = path_name(path)
    placed[name] = (param_spec(name, leaf.shape, mesh, rule_list), leaf.shape)
    return NamedSharding(mesh, placed[name][0])

  def follow_params(path, leaf):  # optimizer state: as the parameter whose path ends its own, if of its shape
    names = path_name(path).split("/")
    for i in range(len(names)):
      spec, shape = placed.get("/".join(names[i:]), (None, None))
      if spec is not None and shape == leaf.shape:
        return NamedSharding(mesh, spec)
    return NamedSharding(mesh, P())

  copied = NamedSharding(mesh, P())
  params = jax.tree_util.tree_map_with_path(place, state.params)
  return state.replace(step=copied, rng=copied, skipped_steps=copied, params=params,
                       opt_state=jax.tree_util.tree_map_with_path(follow_params, state.opt_state),
                       model_state=jax.tree.map(lambda _: copied, state.model_state))


def of(tree):
  """The shardings of a pytree of arrays (or of ShapeDtypeStructs that carry them)."""
  return jax.tree.map(lambda x: x.sharding, tree)


def constrain_batch(x: jax.Array) -> jax.Array:
  """Keeps activations x[B, ...] split by rows like the batch (over data and fsdp) when traced under a mesh with
  those axes (the train and eval steps set it); elsewhere (one device, export, shard_map) returns x as is."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.manual_axes or not set(BATCH) <= set(mesh.axis_names):
    return x
  if x.shape[0] % (mesh.shape[BATCH[0]] * mesh.shape[BATCH[1]]):  # e.g. one prompt being generated
    return x
  return jax.lax.with_sharding_constraint(x, P(BATCH))
