"""The trainer's compiled train step against the hand-written loop's, in one process.

`train` times whole runs in separate processes, and on a shared 2-core VM single
runs of one system differed by up to +-15%. Here both steps run in one process
on the same host batches, alternating in blocks (each block's order flipped in
turn), and the table reports medians of the blocks' time per step. That
isolates what the trainer compiles on top of the minimal step (the NaN guard,
the gradient norm, the metric vector): on the Zen 5 VM repeated runs' medians
agreed within about 3%, where whole runs differed by 15%. The loop's host work
(input pipeline, logging, checks) is not in it: `train` measures that.
"""

from __future__ import annotations

import statistics
import time

from research.bench import train as train_bench
from research.bench.timing import machine, table


def trainer_loop(name: str):
  """`run(n)`: n steps of the library's own jitted train step (as research.train.loop builds it), cycling through
  the hand-written loop's batches; blocks until done."""
  import jax

  from research import parallel
  from research.data import augment
  from research.registry import DATASETS
  from research.train import experiment
  from research.train.step import make_steps

  spec = train_bench.SPECS[name]
  x, y = train_bench._data(name)
  DATASETS.register("bench")(lambda split: {spec["input_key"]: x, "label": y})
  config = train_bench.trainer_config(name, steps=1)
  mesh = parallel.make_mesh(config)
  model = experiment.model_factory(config, experiment.load_split(config, "train"), lambda batch: batch)
  graphdef, state, tx, _ = experiment.build_state(config, model, 1, mesh)
  step, _ = make_steps(graphdef, tx, mesh, strategy=config.parallel.strategy, input_key=spec["input_key"],
                       label_smoothing=config.label_smoothing, augment=augment.build(config.data.augment))
  batch = spec["batch"]

  def run(n):
    nonlocal state
    for i in range(n):
      s = (i % train_bench.BATCHES) * batch
      state, metrics = step(state, {spec["input_key"]: x[s:s + batch], "label": y[s:s + batch]})
    jax.block_until_ready(metrics)

  return run


def compare(name: str, blocks: int, steps: int) -> dict[str, float]:
  """Median ms per step of each loop over `blocks` alternating blocks of `steps` steps."""
  loops = {"hand": train_bench.hand_loop(name), "trainer": trainer_loop(name)}
  for run in loops.values():
    run(2)  # compile
  times: dict[str, list[float]] = {k: [] for k in loops}
  for block in range(blocks):
    for key in (list(loops) if block % 2 else list(loops)[::-1]):
      start = time.perf_counter()
      loops[key](steps)
      times[key].append((time.perf_counter() - start) / steps * 1e3)
  return {k: statistics.median(v) for k, v in times.items()}


# Steps per block: about 0.2-0.4 s each on 2 cores.
BLOCK_STEPS = {"mlp": 100, "cnn": 10, "transformer": 3}


def run(quick: bool = False) -> str:
  """The table; `quick` checks the harness on the MLP (the train section's quick run covers every model)."""
  blocks, models = (2, ("mlp",)) if quick else (24, tuple(train_bench.SPECS))
  rows = []
  for name in models:
    steps = 1 if quick else BLOCK_STEPS[name]
    code = ("import json; from research.bench import steps; "
            f"print(json.dumps(steps.compare({name!r}, {blocks}, {steps})))")
    ms = train_bench.run_python(code, train_bench.training_profile(name))
    if "error" in ms:
      raise RuntimeError(f"steps {name}: {ms['error']}")
    rows.append([name, f"{ms['hand']:.2f}", f"{ms['trainer']:.2f}", f"{ms['hand'] / ms['trainer']:.3f}x"])
  return (f"The trainer's jitted train step against the hand-written loop's, in one process per model (with the "
          f"XLA profile of `train`): medians of {blocks} alternating blocks of steps on the same batches, float32.\n"
          f"Machine: {machine()}.\n\n"
          + table(["model", "hand-written step ms", "trainer step ms", "trainer step speed vs hand-written"], rows))
