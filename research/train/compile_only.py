"""Check before you launch: compile a config's train step for a target mesh without having it, and say whether it
fits an accelerator's memory.

The train state and the batch are abstract (`jax.ShapeDtypeStruct`s carrying their shardings: nothing is
allocated), and the step is lowered and compiled for the mesh of `config.mesh` over simulated CPU devices
(`scripts/train.py --compile_only` starts JAX with as many as the mesh needs). XLA's memory analysis of the
compiled program gives the bytes each device holds: its arguments (its shards of the parameters and optimizer
state, and of the batch), its temporaries (activations, gradients, gathered weights) and the peak of the two.
Its cost analysis gives the FLOPs each device computes per step. Parameter and optimizer bytes are exact for any
backend; temporaries are XLA:CPU's, which fuses differently from a GPU or TPU compiler, so read them as an
estimate.
"""

from __future__ import annotations

import dataclasses
import tempfile

import jax
import numpy as np

from research import parallel, sharding
from research.accelerators import GIB, memory_bytes
from research.data import augment
from research.errors import ConfigError, TrainingError
from research.train import experiment
from research.train.step import make_steps


@dataclasses.dataclass
class Report:
  mesh: dict[str, int]
  parameters: int  # count
  state_bytes: int  # parameters and optimizer state, all devices together
  argument_bytes: int  # per device, XLA: its shards of the state and the batch
  batch_bytes: int  # per device
  temp_bytes: int  # per device, XLA
  peak_bytes: int  # per device: arguments + outputs not written over the (donated) arguments + temporaries
  flops: float  # per device and step, XLA

  @property
  def device_state_bytes(self) -> int:
    """Per device: its shards of the parameters and optimizer state (XLA's arguments less the batch)."""
    return self.argument_bytes - self.batch_bytes


def abstract_batch(config, examples: dict[str, np.ndarray], preprocess, mesh) -> dict:
  """The shapes of a global train batch of `data.batch_size` rows, split like the pipeline splits it."""
  parallel.check_batch_size(config.data.batch_size, mesh, "data.batch_size")
  rows = preprocess({k: v[:2] for k, v in examples.items()})
  where = parallel.batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct((config.data.batch_size, *np.shape(v)[1:]), np.asarray(v).dtype, sharding=where)
          for k, v in rows.items()}


def compile_step(config, examples: dict[str, np.ndarray], preprocess, num_devices: int) -> Report:
  """Compiles the train step of `config` for its mesh over `num_devices` of this process's devices."""
  if jax.device_count() < num_devices:
    raise ConfigError(f"{num_devices} devices are needed and {jax.device_count()} are visible; "
                      f"scripts/train.py --compile_only --devices {num_devices} simulates them.")
  mesh = parallel.make_mesh(config, jax.devices()[:num_devices])
  make_model = experiment.model_factory(config, examples, preprocess, config.compute_dtype)
  graphdef, state, tx, _ = experiment.abstract_state(config, make_model, max(config.train.steps, 1), mesh)
  batch = abstract_batch(config, examples, preprocess, mesh)
  train_step, _ = make_steps(graphdef, tx, mesh, strategy=config.parallel.strategy, input_key=config.data.input_key,
                             label_smoothing=config.label_smoothing, augment=augment.build(config.data.augment),
                             rollback=config.nan_policy == "skip", state_sharding=sharding.of(state))
  compiled = train_step.lower(state, batch).compile()
  memory, cost = compiled.memory_analysis(), compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  per_device = lambda x: int(np.prod(x.sharding.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
  return Report(
      mesh=dict(mesh.shape), parameters=sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params)),
      state_bytes=sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                      for x in jax.tree.leaves((state.params, state.opt_state))),
      argument_bytes=memory.argument_size_in_bytes, batch_bytes=sum(per_device(x) for x in batch.values()),
      temp_bytes=memory.temp_size_in_bytes,
      peak_bytes=memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
      + memory.temp_size_in_bytes,
      flops=float(cost.get("flops", 0.0)))


def describe(report: Report) -> str:
  """The report as lines a person reads."""
  gib = lambda b: f"{b / GIB:.2f} GiB"
  mesh = " ".join(f"{axis}={size}" for axis, size in report.mesh.items())
  devices = int(np.prod(list(report.mesh.values())))
  return "\n".join([
      f"mesh {mesh} ({devices} devices)",
      f"parameters: {report.parameters:,}; parameters + optimizer state: {gib(report.state_bytes)} in all",
      (f"per device: parameters + optimizer state {gib(report.device_state_bytes)}, batch "
       f"{gib(report.batch_bytes)}, temporaries {gib(report.temp_bytes)}, peak {gib(report.peak_bytes)}"),
      f"FLOPs per step: {report.flops:.3g} per device, {report.flops * devices:.3g} in all"])


def check_fit(report: Report, accelerator: str) -> str:
  """The line that says the run fits `accelerator`; raises TrainingError with the numbers if it does not.
  The peak counts all of a device's memory the compiled step uses; the runtime's own is not counted."""
  memory = memory_bytes(accelerator)
  line = f"{report.peak_bytes / GIB:.2f} GiB of the {memory / GIB:.0f} GiB of a {accelerator} per device"
  if report.peak_bytes > memory:
    raise TrainingError(f"does not fit: needs {line}. Split the state over more devices (mesh.fsdp), or use "
                        f"a smaller data.batch_size or model.")
  return f"fits: {line}"


def run(config, num_devices: int, accelerator: str | None, out=print) -> Report:
  """`scripts/train.py --compile_only`: prints the report of `config` on `num_devices` devices, then whether it
  fits `accelerator` if one is named (a TrainingError if it does not)."""
  if accelerator is not None:
    memory_bytes(accelerator)  # a wrong name fails before the compile
  examples = experiment.load_split(config, "train")
  with tempfile.TemporaryDirectory() as assets:  # fitted preprocessing (e.g. a tokenizer) writes files
    report = compile_step(config, examples, experiment.preprocessor(config, assets, examples), num_devices)
  out(describe(report))
  if accelerator is not None:
    out(check_fit(report, accelerator))
  return report
