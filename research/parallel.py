"""Device mesh and shardings.

The mesh has three axes, sized by `config.mesh`:

- `data`: data parallel: batch rows are split over it, the train state is copied;
- `fsdp`: fully sharded data parallel: batch rows are split over it too, and every parameter and its optimizer
  state are split over it (research/sharding.py says which dimension);
- `tensor`: tensor parallel: attention heads and MLP hidden units are split over it (the rules name the weights).

`-1` gives one axis the devices the others leave (`config.mesh.data = -1`, the default, puts every device of
every process on the data axis). Axes are `AxisType.Auto`, so `jit` may choose the layouts between them.
"""

from __future__ import annotations

import math

import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from research.errors import ConfigError

DATA, FSDP, TENSOR = "data", "fsdp", "tensor"
AXES = (DATA, FSDP, TENSOR)
BATCH = (DATA, FSDP)  # the axes batch rows are split over


def axis_sizes(config, num_devices: int) -> dict[str, int]:
  """{"data": ..., "fsdp": ..., "tensor": ...} of `config.mesh` for `num_devices` devices (-1 resolved)."""
  sizes = {axis: config.mesh.get(axis, 1) for axis in AXES}
  asked = ", ".join(f"mesh.{axis}={size}" for axis, size in sizes.items())
  rest = [axis for axis, size in sizes.items() if size == -1]
  if len(rest) > 1:
    raise ConfigError(f"{asked}: only one axis can be -1 (the devices the others leave); give the others sizes.")
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if rest and num_devices % fixed == 0:
    sizes[rest[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ConfigError(f"{asked} does not divide the {num_devices} devices visible; make the product of the axes "
                      f"{num_devices}, or set one axis to -1 to take the devices the others leave.")
  if config.parallel.strategy == "pmap" and (sizes[FSDP] > 1 or sizes[TENSOR] > 1):
    raise ConfigError(f"parallel.strategy='pmap' splits only the data axis ({asked}); use "
                      f"parallel.strategy='auto' for fsdp or tensor parallelism.")
  return sizes


def make_mesh(config, devices=None) -> Mesh:
  """The (data, fsdp, tensor) mesh of `config.mesh` over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  sizes = axis_sizes(config, len(devices))
  return jax.make_mesh(tuple(sizes.values()), AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def tensor_warning(config, mesh: Mesh) -> str | None:
  """A warning when tensor parallelism splits attention heads: the step stays right, but XLA moves parts of heads
  between the devices in every attention (docs/sharding.md)."""
  tensor, heads = mesh.shape[TENSOR], config.model.get("num_heads")
  if tensor > 1 and isinstance(heads, int) and heads % tensor:
    return (f"warning: mesh.tensor={tensor} does not divide model.num_heads={heads}, so devices hold parts of heads "
            f"and every attention moves them between devices; a tensor size that divides {heads} keeps heads whole.")
  return None


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_ways(mesh: Mesh) -> int:
  """How many ways batch rows are split (data x fsdp)."""
  return math.prod(mesh.shape[axis] for axis in BATCH)


def check_batch_size(batch_size: int, mesh: Mesh, what: str) -> None:
  n = batch_ways(mesh)
  if batch_size % n:
    raise ConfigError(f"{what}={batch_size} must be divisible by the {n} devices its rows are split over "
                      f"(mesh data x fsdp); try {max(n, batch_size // n * n)}.")

