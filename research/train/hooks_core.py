"""The hooks every run has: train-metric logging, evaluation and its logging, the model's own summaries,
best-checkpoint keeping and early stopping (research/train/hooks.py explains hooks)."""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import jax
import numpy as np
from flax import nnx

from research import metrics, parallel
from research.data.pipeline import eval_batches
from research.errors import ConfigError
from research.models.interface import abilities
from research.train.hooks import Context, Hook, Run

MAX_UNAWAITED_STEPS = 16  # see research/train/loop.py


# The running sums plus a batch's, as one program: added leaf by leaf, eagerly, each leaf was a multi-device program of
# its own, and with ~6 leaves 16 batches dispatched ~110 programs between waits, past the ~30 at which XLA:CPU's
# rendezvous deadlocks (DESIGN.md): a 2-process evaluation hung, an 8-device one aborted.
accumulate = jax.jit(metrics.add)
BATCHES_BETWEEN_WAITS = MAX_UNAWAITED_STEPS // 2  # two programs per batch: the evaluation step and `accumulate`


def evaluate(eval_step, state, arrays, config, mesh, preprocess, summarize=metrics.summarize) -> dict[str, float]:
  """Metrics over a whole split, as exact sums over all its examples, summarized by the model's rule."""
  sums = None
  batches = eval_batches(arrays, config.data.eval_batch_size, parallel.batch_sharding(mesh), preprocess)
  with contextlib.closing(batches):
    for i, batch in enumerate(batches, 1):
      new = eval_step(state, batch)
      sums = new if sums is None else accumulate(sums, new)
      if i % BATCHES_BETWEEN_WAITS == 0:
        jax.block_until_ready(sums)
  return summarize(jax.device_get(sums))


class LogTrain(Hook):
  """train/loss, train/grad_norm (means over the steps since the last log), train/learning_rate, and throughput:
  perf/steps_per_sec, perf/examples_per_sec, perf/data_wait_fraction (time in hooks and checkpoint saves
  excluded), and what `more(steps_per_sec, state, batch)` adds (FLOP/s and MFU, research/train/throughput.py).
  Every `every` steps and at this invocation's last step."""

  def __init__(self, every: int, run: Run, more: Callable[..., dict] = lambda steps_per_sec, state, batch: {}):
    self.every, self.more = every, more
    self.mark = (run.start, time.perf_counter(), run.clock.excluded, 0.0)  # (step, time, excluded, data wait)

  def due(self, step: int, run: Run) -> bool:
    return super().due(step, run) or step == run.stop

  def __call__(self, ctx: Context) -> None:
    if not ctx.step_metrics:
      return
    run, step = ctx.run, ctx.step
    last_step, last_time, last_excluded, last_wait = self.mark
    now = time.perf_counter()
    elapsed = (now - last_time) - (run.clock.excluded - last_excluded)
    steps_per_sec = (step - last_step) / elapsed
    finite = [m for m in ctx.step_metrics if not m["nonfinite"]] or ctx.step_metrics
    values = {f"train/{k}": float(np.mean([m[k] for m in finite])) for k in ("loss", "grad_norm")}
    values.update({"train/learning_rate": float(run.schedule(step - 1)),  # the rate step `step` applied
                   "train/skipped_steps": float(ctx.state.skipped_steps) if run.config.nan_policy == "skip" else 0.0,
                   "perf/steps_per_sec": steps_per_sec,
                   "perf/examples_per_sec": steps_per_sec * run.config.data.batch_size,
                   "perf/data_wait_fraction": (run.data_wait() - last_wait) / elapsed})
    values.update(self.more(steps_per_sec, ctx.state, ctx.batch))
    run.writer.scalars(step, values)
    run.progress.update(step, {"loss": values["train/loss"]})
    self.mark = (step, now, run.clock.excluded, run.data_wait())


class Evaluate(Hook):
  """Evaluates on the whole test split every `every` steps and at the run's last step; sets ctx.eval_metrics
  (and ctx.eval_sums), which then runs the at_eval hooks."""

  def __init__(self, every: int, evaluate_fn: Callable):
    self.every, self.evaluate_fn = every, evaluate_fn  # evaluate_fn(state, summarize) -> metrics

  def due(self, step: int, run: Run) -> bool:
    return super().due(step, run) or step == run.total_steps

  def __call__(self, ctx: Context) -> None:
    kept = {}

    def summarize(sums):
      kept.update(sums)
      return ctx.run.abilities.summarize(sums)

    ctx.eval_metrics, ctx.eval_sums = self.evaluate_fn(ctx.state, summarize), kept


def log_eval(ctx: Context) -> None:
  """eval/<metric> scalars, and a console line."""
  ctx.run.writer.scalars(ctx.step, {f"eval/{k}": v for k, v in ctx.eval_metrics.items()})
  ctx.run.progress.message(f"step {ctx.step}: " + ", ".join(f"eval {k} {v:.4f}" for k, v in ctx.eval_metrics.items()))


class ModelSummaries(Hook):
  """The model's own `summaries` (generated text, reconstructions) of fixed test examples, at each evaluation."""
  at_eval = True

  def __init__(self, batch: dict):
    self.batch = batch

  def __call__(self, ctx: Context) -> None:
    run = ctx.run
    trained = nnx.merge(run.graphdef, ctx.state.params, ctx.state.model_state)
    summaries = abilities(trained).summaries(self.batch, jax.random.fold_in(ctx.state.rng, ctx.step))
    run.writer.summaries(ctx.step, summaries)


class BestMetric(Hook):
  """Tracks the best eval value of `checkpoint.best_metric` and saves a checkpoint at each evaluation, with its
  metrics, so the checkpointer keeps the `keep_best` best."""
  at_eval = True

  def __init__(self, metric: str, mode: str):
    self.metric, self.mode = metric, mode
    self.best_value, self.best_step, self.bad_evals = None, None, 0

  def __call__(self, ctx: Context) -> None:
    if self.metric not in ctx.eval_metrics:
      raise ConfigError(f"checkpoint.best_metric={self.metric!r} is not an eval metric of this run; "
                        f"choose one of {', '.join(sorted(ctx.eval_metrics))}.")
    value = ctx.eval_metrics[self.metric]
    better = self.best_value is None or (value > self.best_value if self.mode == "max" else value < self.best_value)
    if better:
      self.best_value, self.best_step, self.bad_evals = value, ctx.step, 0
    else:
      self.bad_evals += 1
    ctx.save = True

  def state(self) -> dict:
    return {"best_value": self.best_value, "best_step": self.best_step, "bad_evals": self.bad_evals}

  def restore(self, state: dict) -> None:
    self.best_value, self.bad_evals = state.get("best_value"), state.get("bad_evals", 0)
    self.best_step = state.get("best_step")


class EarlyStopping(Hook):
  """Stops the run once `best` has not improved for `patience` evaluations."""
  at_eval = True

  def __init__(self, best: BestMetric, patience: int):
    self.best, self.patience, self.stopped = best, patience, False

  def __call__(self, ctx: Context) -> None:
    if self.best.bad_evals >= self.patience:
      self.stopped = True
      best = self.best
      at = f"step {best.best_step}" if best.best_step is not None else "an earlier step"
      ctx.stop = (f"Early stopping at step {ctx.step}: eval {best.metric} has not improved for {self.patience} "
                  f"evaluations; best is {at} ({best.best_value:.4f}).")

  def state(self) -> dict:
    return {"stopped_early": self.stopped}

  def restore(self, state: dict) -> None:
    self.stopped = bool(state.get("stopped_early"))
