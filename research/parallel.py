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


def initialize(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> None:
  """Joins a multi-process run (`jax.distributed.initialize`) when a coordinator is given.

  Every process runs the same command with its own `process_id`; each builds only
  its rows of every global batch. On clusters that JAX detects itself (TPU pods,
  SLURM), pass `--coordinator_address=auto`.
  """
  if coordinator_address is None:
    if num_processes is not None or process_id is not None:
      raise ConfigError("--num_processes and --process_id need --coordinator_address (host:port of process 0).")
    return
  if coordinator_address == "auto":
    jax.distributed.initialize()
    return
  if num_processes is None or process_id is None:
    raise ConfigError("--coordinator_address needs --num_processes and --process_id.")
  if num_processes < 1:
    raise ConfigError(f"--num_processes={num_processes}: a run has at least 1 process.")
  if not 0 <= process_id < num_processes:
    raise ConfigError(f"--process_id={process_id}: the ids of {num_processes} processes are 0 to {num_processes - 1}.")
  jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id)
