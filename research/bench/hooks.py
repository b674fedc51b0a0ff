"""What the optional TensorBoard hooks cost at their default periods, against the train step, in one process.

A hook that runs every P steps and takes h ms per call adds h / P ms to each step. Whole runs with and without
hooks differ by less than a shared 2-core VM's run-to-run noise (+-15%, see steps.py), so this section times the
two parts side by side in one process instead: the library's jitted train step (median of blocks of steps) and
each periodic hook of research/train/hooks_tensorboard.py at the default config (median of calls, each on a
fresh step, through a real MetricWriter into a temporary directory). The first call of a hook compiles its
function; that one-time cost is reported apart. Hooks that run at evaluations or once at the start (the
confusion matrix, the schedule) cost no step time.
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from pathlib import Path

from research.bench import train as train_bench
from research.bench.timing import machine, table


def measure(name: str, blocks: int, steps: int, calls: int) -> dict:
  """{"step_ms", "hooks": {hook: {"every", "first_ms", "ms"}}} for the benchmark's `name` model."""
  import jax

  from research import parallel
  from research.data import augment
  from research.logging import MetricWriter, Progress
  from research.models.interface import abilities
  from research.registry import DATASETS
  from research.train import experiment, hooks, hooks_tensorboard
  from research.train.step import make_steps

  spec = train_bench.SPECS[name]
  x, y = train_bench._data(name)
  DATASETS.register("bench")(lambda split: {spec["input_key"]: x, "label": y})
  config = train_bench.trainer_config(name, steps=1)
  config.data.augment = "random_crop(pad=2)" if x.ndim == 4 else ""  # as the zoo's CNN: the input grid shows it
  mesh = parallel.make_mesh(config)
  model = experiment.model_factory(config, experiment.load_split(config, "train"), lambda batch: batch)
  graphdef, state, tx, schedule = experiment.build_state(config, model, 1, mesh)
  train_step, _ = make_steps(graphdef, tx, mesh, strategy="auto", input_key=spec["input_key"],
                             augment=augment.build(config.data.augment))
  batch_size = spec["batch"]
  sharding = parallel.batch_sharding(mesh)
  batches = [jax.device_put({spec["input_key"]: x[s:s + batch_size], "label": y[s:s + batch_size]}, sharding)
             for s in range(0, batch_size * train_bench.BATCHES, batch_size)]

  def run_steps(n: int, first: int = 0):
    nonlocal state
    for i in range(n):
      state, metrics = train_step(state, batches[(first + i) % len(batches)])
    jax.block_until_ready(metrics)

  run_steps(2)  # compile
  step_times = []
  for _ in range(blocks):
    start = time.perf_counter()
    run_steps(steps)
    step_times.append((time.perf_counter() - start) / steps * 1e3)

  with tempfile.TemporaryDirectory() as workdir:
    writer = MetricWriter(Path(workdir))
    run = hooks.Run(config=config, workdir=Path(workdir), writer=writer, progress=Progress(1, 0, 1, io.StringIO()),
                    mesh=mesh, graphdef=graphdef, tx=tx, schedule=jax.jit(schedule), abilities=abilities(model),
                    start=0, stop=1, total_steps=1)
    found = {}
    for hook in hooks_tensorboard.configured(config):
      if not hook.every or (isinstance(hook, hooks_tensorboard.InputGrid) and x.ndim != 4):
        continue  # at evaluations or at the start: no step time; input grids are drawn of images only
      times = []
      for call in range(calls + 1):
        run_steps(1, call)  # a fresh step: what the hook computes is not cached from the last call
        run.cache.pop("gradients", None)
        start = time.perf_counter()
        hook(hooks.Context(run, call + 1, state, batches[call % len(batches)]))
        writer.flush()
        times.append((time.perf_counter() - start) * 1e3)
      found[type(hook).__name__] = {"every": hook.every, "first_ms": times[0], "ms": statistics.median(times[1:])}
    writer.close()
  return {"step_ms": statistics.median(step_times), "hooks": found}


def run(quick: bool = False) -> str:
  """The table: per model, the step, each periodic hook's cost per call and per step, and the total share."""
  models, (blocks, steps, calls) = (("mlp",), (2, 3, 2)) if quick else (("mlp", "cnn"), (12, 0, 7))
  rows, shares = [], {}
  for name in models:
    block_steps = steps or {"mlp": 100, "cnn": 10}[name]  # about 0.2-0.4 s a block on 2 cores
    code = ("import json; from research.bench import hooks; "
            f"print(json.dumps(hooks.measure({name!r}, {blocks}, {block_steps}, {calls})))")
    found = train_bench.run_python(code, train_bench.training_profile(name))
    if "error" in found:
      raise RuntimeError(f"hooks {name}: {found['error']}")
    step_ms = found["step_ms"]
    rows.append([name, "train step (no optional hooks)", "every step", "", f"{step_ms:.2f}", "", ""])
    total = 0.0
    for hook, h in found["hooks"].items():
      per_step = h["ms"] / h["every"]
      total += per_step
      rows.append([name, hook, f"every {h['every']:,}", f"{h['first_ms']:.0f}", f"{h['ms']:.1f}", f"{per_step:.4f}",
                   f"{100 * per_step / step_ms:.2f}%"])
    shares[name] = 100 * total / step_ms
    rows.append([name, "**all, at the default periods**", "", "", "", f"{total:.4f}", f"**{shares[name]:.2f}%**"])
  return (f"Cost of the optional TensorBoard hooks at their default periods (research/config.py `config.hooks`), "
          f"against the library's jitted train step of the same model in the same process (batch 128, float32). "
          f"Steps: median of {blocks} blocks; hooks: median of {calls} calls after a first, compiling one.\n"
          f"Machine: {machine()}.\n\n"
          + table(["model", "what", "period", "first call ms (compiles)", "ms per call", "ms per step",
                   "share of step time"], rows))
