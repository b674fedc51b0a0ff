"""Device mesh and shardings.

`config.mesh.data = -1` puts every device (of every process) on the data axis.
Batches are sharded on their leading axis over `data`; the train state is
replicated. Axes are `AxisType.Auto`, so `jit` may choose layouts freely.
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from research.errors import ConfigError

DATA = "data"


def make_mesh(config) -> Mesh:
  n = jax.device_count()
  size = config.mesh.data
  size = n if size == -1 else size
  if size != n:
    raise ConfigError(f"mesh.data={config.mesh.data} but {n} devices are visible; use -1 for all of them.")
  return jax.make_mesh((size,), (DATA,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: Mesh, what: str) -> None:
  n = mesh.shape[DATA]
  if batch_size % n:
    raise ConfigError(f"{what}={batch_size} must be divisible by the {n} devices on the data axis; "
                      f"try {max(n, batch_size // n * n)}.")

