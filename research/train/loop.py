"""The training loop: one function, read top to bottom.

    config -> data -> model + optimizer -> TrainState -> (resume) -> steps, eval, logs, checkpoints

Rerunning with the same workdir resumes from the newest readable checkpoint.
The loop waits on a result at least every `MAX_UNAWAITED_STEPS` steps: on the
CPU backend, ~30 multi-device steps dispatched without a wait can deadlock XLA's
all-reduce rendezvous (see DESIGN.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from research import config as config_lib
from research import metrics, models, optim, parallel  # noqa: F401  (models: registers the zoo)
from research.checkpoint import Checkpointer
from research.data import ops
from research.data.pipeline import Pipeline, eval_batches
from research.data.sources import get_split
from research.errors import ConfigError
from research.logging import MetricWriter, Progress
from research.registry import DATASETS, MODELS
from research.train import state as state_lib
from research.train.step import STRATEGIES, make_steps

MAX_UNAWAITED_STEPS = 16


def evaluate(eval_step, state, arrays, config, mesh, preprocess) -> dict[str, float]:
  """Loss and accuracy over a whole split, as exact sums over all its examples."""
  sums = None
  batches = eval_batches(arrays, config.data.eval_batch_size, parallel.batch_sharding(mesh), preprocess)
  for i, batch in enumerate(batches, 1):
    sums = metrics.add(sums, eval_step(state, batch))
    if i % MAX_UNAWAITED_STEPS == 0:
      jax.block_until_ready(sums)
  return metrics.summarize(jax.device_get(sums))


def check(config) -> None:
  """Fails fast, before any data is loaded, on names and sizes the run cannot use."""
  MODELS.get(config.model.name)
  DATASETS.get(config.data.name)
  ops.build(config.data.preprocess)
  if config.parallel.strategy not in STRATEGIES:
    raise ConfigError(f"parallel.strategy={config.parallel.strategy!r}; choose one of {', '.join(STRATEGIES)}.")
  if config.train.steps <= 0 and config.train.epochs <= 0:
    raise ConfigError("Set train.steps or train.epochs to a positive number.")
  for key in ("log_every", "eval_every", "stop_after_steps"):
    if config.train[key] < 0:
      raise ConfigError(f"train.{key} must be >= 0 (0 turns it off), got {config.train[key]}.")


def train(config, workdir: str | Path) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the final eval metrics."""
  # --- Config: validate and record. -------------------------------------------------------------
  check(config)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = parallel.make_mesh(config)
  parallel.check_batch_size(config.data.batch_size, mesh, "data.batch_size")
  parallel.check_batch_size(config.data.eval_batch_size, mesh, "data.eval_batch_size")
  preprocess = ops.build(config.data.preprocess)
  changed = config_lib.save(config, workdir)

  # --- Data. --------------------------------------------------------------------------------------
  train_arrays = get_split(config.data.name, "train")
  test_arrays = get_split(config.data.name, "test")
  pipeline = Pipeline(train_arrays, batch_size=config.data.batch_size, sharding=parallel.batch_sharding(mesh),
                      preprocess=preprocess, seed=config.seed, shuffle=config.data.shuffle)
  total_steps = config.train.steps if config.train.steps > 0 else config.train.epochs * pipeline.steps_per_epoch

  # --- Model, optimizer, state. -------------------------------------------------------------------
  sample = preprocess({k: v[:2] for k, v in train_arrays.items()})[config.data.input_key]
  model = MODELS.get(config.model.name)(config.model, sample, nnx.Rngs(config.seed))
  tx, schedule = optim.build(config, total_steps)
  graphdef, state = state_lib.create(model, tx, config.seed)
  state = jax.device_put(state, parallel.replicated(mesh))
  train_step, eval_step = make_steps(graphdef, tx, mesh, strategy=config.parallel.strategy,
                                     input_key=config.data.input_key,
                                     label_smoothing=config.get("label_smoothing", 0.0))

  # --- Resume from the newest readable checkpoint, if any. -----------------------------------------
  checkpoints = Checkpointer(workdir / "checkpoints", every=config.checkpoint.every, keep=config.checkpoint.keep)
  restored = checkpoints.restore(state)
  start = 0
  if restored is not None:
    state, meta = restored
    start = int(meta["step"])
  writer = MetricWriter(workdir, resume_step=start)
  progress = Progress(total_steps, start, config.data.batch_size)
  if start:
    progress.message(f"Resuming from step {start} in {checkpoints.directory}.")
    if changed:
      progress.message(f"warning: the config differs from the one this workdir was trained with: {', '.join(changed)}")

  # --- Train. ---------------------------------------------------------------------------------------
  stop = min(total_steps, start + config.train.stop_after_steps) if config.train.stop_after_steps else total_steps
  log_every = config.train.log_every or total_steps
  eval_every = config.train.eval_every
  pending: list[dict] = []  # Step metrics still on device; fetched together at the next log.
  timer_step, timer = start, time.perf_counter()
  final = {}
  for step, batch in zip(range(start + 1, stop + 1), pipeline.iterate(start, stop - start)):
    state, step_metrics = train_step(state, batch)
    pending.append(step_metrics)
    last = step == total_steps
    if step % log_every == 0 or step == stop:
      fetched = jax.device_get(pending)
      pending = []
      elapsed = time.perf_counter() - timer
      steps_per_sec = (step - timer_step) / elapsed
      values = {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
      values.update({"train/learning_rate": float(schedule(step - 1)), "perf/steps_per_sec": steps_per_sec,
                     "perf/examples_per_sec": steps_per_sec * config.data.batch_size})
      writer.scalars(step, values)
      progress.update(step, {"loss": values["train/loss"]})
      timer_step, timer = step, time.perf_counter()
    elif len(pending) % MAX_UNAWAITED_STEPS == 0:
      jax.block_until_ready(step_metrics)

    if (eval_every and step % eval_every == 0) or last:
      final = evaluate(eval_step, state, test_arrays, config, mesh, preprocess)
      writer.scalars(step, {f"eval/{k}": v for k, v in final.items()})
      progress.message(f"step {step}: " + ", ".join(f"eval {k} {v:.4f}" for k, v in final.items()))
      timer = time.perf_counter()  # Evaluation time is not training throughput.

    if checkpoints.save(step, state, pipeline.position(step), force=step == stop):
      timer = time.perf_counter()

  # --- Finish: wait for the last checkpoint write. ---------------------------------------------------
  if stop < total_steps:
    progress.message(f"Stopped after step {stop} of {total_steps} (train.stop_after_steps); rerun to continue.")
  if start >= total_steps:
    final = evaluate(eval_step, state, test_arrays, config, mesh, preprocess)
    progress.message(f"Already trained to step {start} of {total_steps}; eval: {final}")
  checkpoints.wait()
  checkpoints.close()
  writer.close()
  return final
