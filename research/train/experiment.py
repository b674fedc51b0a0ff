"""An experiment's parts built from its config, and the same parts read back from a workdir.

`scripts/train.py`, `scripts/evaluate.py` and the exporters all build the model
and its TrainState the same way, through here, so a checkpoint always restores
onto exactly the structure that saved it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax
import ml_collections
import numpy as np
from flax import nnx

from research import config as config_lib
from research import models, optim, parallel, sharding  # noqa: F401  (models: registers the zoo)
from research.checkpoint import Checkpointer
from research.data import clean, ops, token_windows
from research.data import spec as data_spec
from research.data.sources import get_split
from research.errors import ConfigError, DataUnavailableError, read_json_object
from research.models import precision
from research.models.layers import fast_paths, remat
from research.registry import MODELS
from research.train import compilation
from research.train import state as state_lib


def load_split(config, split: str) -> dict[str, np.ndarray]:
  """A split of the configured dataset, after the config's cleaning (research/data/clean.py)."""
  arrays = clean.apply(config.data.clean, get_split(config.data.name, split))
  token_windows.check_model(config.model, arrays)  # token shards of another vocabulary: one line, not a bad lookup
  return arrays


def preprocessor(config, workdir: str | Path, train_arrays: dict[str, np.ndarray] | None = None):
  """The run's preprocessing; fitted ops are fitted on `train_arrays` once and then read from `workdir`."""
  return ops.build(config.data.preprocess, fit_on=train_arrays, assets_dir=workdir)


def model_factory(config, arrays: dict[str, np.ndarray], preprocess,
                  compute_dtype: str | None = None) -> Callable[[], nnx.Module]:
  """A function that builds the registered model anew at each call, sized by two preprocessed examples of `arrays`,
  with `config.fast_paths`, `config.remat` and (if given) `compute_dtype`. Called under `jax.jit` it initializes
  every parameter in one compiled program (see `build_state`); called as is, op by op."""
  sample = preprocess({k: v[:2] for k, v in arrays.items()})[config.data.input_key]

  def make() -> nnx.Module:
    model = MODELS.get(config.model.name)(config.model, sample, nnx.Rngs(config.seed))
    model = remat.configure(fast_paths.configure(model, config.fast_paths), config.remat)
    return precision.set_compute_dtype(model, compute_dtype) if compute_dtype else model

  return make


def build_model(config, arrays: dict[str, np.ndarray], preprocess) -> nnx.Module:
  """The registered model, built and initialized now (see `model_factory`)."""
  return model_factory(config, arrays, preprocess)()


def abstract_state(config, make_model: Callable[[], nnx.Module], total_steps: int, mesh):
  """(graphdef, TrainState of ShapeDtypeStructs carrying the config's shardings, optimizer, schedule): the state's
  layout, computing no value."""
  tx, schedule = optim.build(config, total_steps)
  graphdefs = []

  def init():
    graphdef, state = state_lib.create(make_model(), tx, config.seed)
    graphdefs.append(graphdef)  # static: the same at every trace
    return state

  shapes = jax.eval_shape(init)
  placed = sharding.state_shardings(shapes, mesh, sharding.rules(config))
  state = jax.tree.map(lambda s, where: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=where), shapes, placed)
  return graphdefs[0], state, tx, schedule


def state_initializer(config, make_model: Callable[[], nnx.Module], total_steps: int, mesh):
  """(graphdef, init, optimizer, schedule): `init()` returns the TrainState at step 0, computed by one compiled
  program whose outputs are already split by the config's rules. Each device computes only its own shards, so no
  device ever holds a whole model that it cannot fit (eagerly, each parameter's initializer would also compile on
  its own)."""
  graphdef, layout, tx, schedule = abstract_state(config, make_model, total_steps, mesh)
  init = jax.jit(lambda: state_lib.create(make_model(), tx, config.seed)[1], out_shardings=sharding.of(layout),
                 compiler_options=init_compiler_options())
  return graphdef, init, tx, schedule


def init_compiler_options() -> dict:
  """XLA options for the program that initializes the state: on a CPU, LLVM at -O1. The random initializers'
  threefry code took LLVM's full optimization 4-5x as long to compile (a ResNet's init: 12.8 s -> 2.4 s, the
  CNN's 4.3 s -> 1.1 s; docs/performance.md), for a program that runs once in milliseconds either way. It is
  integer hashing and exact float steps: the state is the same bit for bit (tests/test_train.py)."""
  return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else {}


def build_state(config, model: Callable[[], nnx.Module] | nnx.Module, total_steps: int, mesh):
  """Returns (graphdef, TrainState at step 0 placed on `mesh` by the config's rules, optimizer, schedule): from a
  `model_factory`, initialized as `state_initializer` does; a model built already is placed as it is."""
  if isinstance(model, nnx.Module):
    tx, schedule = optim.build(config, total_steps)
    graphdef, state = state_lib.create(model, tx, config.seed)
    return graphdef, jax.device_put(state, sharding.state_shardings(state, mesh, sharding.rules(config))), tx, schedule
  graphdef, init, tx, schedule = state_initializer(config, model, total_steps, mesh)
  return graphdef, init(), tx, schedule


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
  saved = read_json_object(Path(workdir) / "config.json", "a config",
                           f"is {workdir} the workdir of a training run?")
  return config_lib.with_defaults(saved)


def resolve_step(checkpoints: Checkpointer, step: str | int | None) -> int | None:
  """'latest' / None -> newest, 'best' -> the marked best, else an int that must exist."""
  available = checkpoints.steps()
  if not available:
    raise ConfigError(f"No checkpoints in {checkpoints.directory}.")
  if step in (None, "latest"):
    return None
  if step == "best":
    best = checkpoints.best_step()
    if best is None:
      raise ConfigError(f"No best checkpoint is marked in {checkpoints.directory} "
                        f"(set checkpoint.best_metric in the config to track one). Steps: {available}.")
    return best
  if int(step) not in available:
    raise ConfigError(f"No checkpoint at step {step} in {checkpoints.directory}; available: {available}.")
  return int(step)


def model_examples(config, workdir: str | Path) -> dict[str, np.ndarray]:
  """Raw examples that size the run's model: synthetic ones from WORKDIR/dataset.json (no data needed), or the
  training split for a workdir written before that record existed."""
  record = data_spec.read(workdir)
  if record is not None:
    return data_spec.synthetic(record["columns"], 2)
  return load_split(config, "train")


def test_split(config, log=None) -> dict[str, np.ndarray] | None:
  """The cleaned test split, or None (saying why through `log`) when no source of the dataset is reachable."""
  try:
    return load_split(config, "test")
  except DataUnavailableError:
    if log:
      log(f"no test data: dataset {config.data.name!r} cannot be loaded from any source here")
    return None


def on_these_devices(config) -> ml_collections.ConfigDict:
  """`config`, or if this machine's devices cannot form its mesh (a run trained on 8 devices with mesh.fsdp=8,
  read on 1), a copy with every device on the data axis: evaluation and export read a run anywhere."""
  try:
    parallel.axis_sizes(config, jax.device_count())
    return config
  except ConfigError:
    config = ml_collections.ConfigDict(config.to_dict())
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    return config


def restore(workdir: str | Path, step: str | int | None = "latest", config=None):
  """Reads a trained run back: returns (config, graphdef, state, meta) on the current devices (the run's mesh
  where they can form it, see `on_these_devices`)."""
  workdir = Path(workdir)
  config = on_these_devices(config or load_config(workdir))
  compilation.enable_reading(config.compilation_cache, workdir)
  mesh = parallel.make_mesh(config)
  make_model = model_factory(config, model_examples(config, workdir), preprocessor(config, workdir))
  graphdef, layout, _, _ = abstract_state(config, make_model, 1, mesh)  # restored into: nothing to initialize
  checkpoints = Checkpointer(workdir / "checkpoints", every=0, keep=0, read_only=True)
  restored = checkpoints.restore(layout, resolve_step(checkpoints, step))
  checkpoints.close()
  state, meta = restored
  return config, graphdef, state, meta


def trained_model(workdir: str | Path, step: str | int | None = "latest") -> tuple[nnx.Module, ml_collections.ConfigDict, dict]:
  """The model of `workdir` at `step` as an nnx.Module, with its config and checkpoint metadata."""
  config, graphdef, state, meta = restore(workdir, step)
  return nnx.merge(graphdef, state.params, state.model_state), config, meta
