"""The training loop: one function, read top to bottom.

    config -> data -> model + optimizer -> TrainState -> (resume) -> steps, eval, logs, checkpoints

Rerunning with the same workdir resumes from the newest readable checkpoint.
SIGTERM/SIGINT stop it cleanly after the current step, with a checkpoint.
The loop waits on a result at least every `MAX_UNAWAITED_STEPS` steps: on the
CPU backend, ~30 multi-device steps dispatched without a wait can deadlock XLA's
all-reduce rendezvous (see DESIGN.md).
"""

from __future__ import annotations

import contextlib
import time
from functools import partial
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from research import config as config_lib
from research import host_memory, metrics, parallel, validate, xla_flags
from research.checkpoint import Checkpointer, failed_step
from research.data import augment, clean, ops
from research.data import spec as data_spec
from research.data.pipeline import Pipeline, WaitTimer, eval_batches, prepared
from research.errors import CheckpointError, ConfigError, TrainingError, brief
from research.logging import MetricWriter, Progress
from research.models import precision
from research.train import accumulation, compilation, experiment, profiling, throughput
from research.train.lock import WorkdirLock
from research.train.preemption import PreemptionGuard
from research.train.step import STRATEGIES, make_steps, named

MAX_UNAWAITED_STEPS = 16
NAN_POLICIES = ("stop", "skip")


def evaluate(eval_step, state, arrays, config, mesh, preprocess, summarize=metrics.summarize) -> dict[str, float]:
  """Metrics over a whole split, as exact sums over all its examples, summarized by the model's rule."""
  sums = None
  batches = eval_batches(arrays, config.data.eval_batch_size, parallel.batch_sharding(mesh), preprocess)
  with contextlib.closing(batches):
    for i, batch in enumerate(batches, 1):
      sums = metrics.add(sums, eval_step(state, batch))
      if i % MAX_UNAWAITED_STEPS == 0:
        jax.block_until_ready(sums)
  return summarize(jax.device_get(sums))


def check(config) -> None:
  """Fails fast, before any data is loaded, on names and values the run cannot use."""
  validate.check(config)  # registry names, and every value against its meaning (research/validate.py)
  ops.parse(config.data.preprocess)
  augment.build(config.data.augment)
  clean.parse(config.data.clean)
  if config.parallel.strategy not in STRATEGIES:
    raise ConfigError(f"parallel.strategy={config.parallel.strategy!r}; choose one of {', '.join(STRATEGIES)}.")
  if config.xla_profile not in xla_flags.PROFILES:
    raise ConfigError(f"xla_profile={config.xla_profile!r}; choose one of {', '.join(xla_flags.PROFILES)}.")
  precision.check(config.compute_dtype)
  if config.nan_policy not in NAN_POLICIES:
    raise ConfigError(f"nan_policy={config.nan_policy!r}; choose one of {', '.join(NAN_POLICIES)}.")
  if config.checkpoint.best_mode not in ("max", "min"):
    raise ConfigError(f"checkpoint.best_mode={config.checkpoint.best_mode!r}; choose 'max' or 'min'.")
  if config.train.early_stopping_patience and not config.checkpoint.best_metric:
    raise ConfigError("train.early_stopping_patience needs checkpoint.best_metric (e.g. 'accuracy') to watch.")


def _make_workdir(workdir: Path) -> None:
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".write_test.{jax.process_index()}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise CheckpointError(f"Cannot write to workdir {workdir}: {e.strerror or e}. Choose a writable --workdir.") from None


def _init_from(spec: str, state, config):
  """`WORKDIR[:STEP]` -> `state` with params and model state from that run (fresh optimizer, step 0)."""
  source, _, step = spec.partition(":")
  source_checkpoints = Checkpointer(Path(source) / "checkpoints", every=0, keep=0, read_only=True)
  step = experiment.resolve_step(source_checkpoints, step or None)
  like = {"params": state.params, "model_state": state.model_state}
  try:
    restored, meta = source_checkpoints.restore(like, step, partial=True)
  except CheckpointError as e:
    raise ConfigError(f"init_from={spec!r}: {e}") from None
  return state.replace(**restored), meta["step"]


def _stopped_before_training(preemption: PreemptionGuard, progress: Progress, when: str,
                             restored: bool = False) -> bool:
  """Whether a signal asked to stop before the first step (every process decides together)."""
  if not preemption.signalled():
    return False
  progress.message(f"Stopped by {preemption.signal_name} {when}; nothing new to save. Rerun the same command to "
                   f"{'resume' if restored else 'start'}.")
  return True


def _check_resumable(checkpoints: Checkpointer, state, changed: dict[str, list], workdir: Path) -> None:
  """A changed config whose state the newest checkpoint cannot hold is one error naming the changed keys."""
  steps = checkpoints.steps()
  if not changed or not steps:
    return
  differ = checkpoints.layout_difference(state, steps[-1])
  if differ:
    keys = ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in changed.items())
    raise ConfigError(f"The config differs from the one {workdir} was trained with: {keys}; its checkpoints cannot "
                      f"hold the new state ({differ[0]}{', ...' if len(differ) > 1 else ''}). Resume with the "
                      f"original config ({workdir / 'config.json'}), train in a new --workdir, or start a new "
                      f"workdir from these weights with --config.init_from={workdir}.")


def _report_config_changes(progress: Progress, workdir: Path, step: int, changed: dict[str, list]) -> None:
  """Names this resume's config changes and earlier ones; records this one in WORKDIR/config_history.jsonl."""
  for earlier in config_lib.history(workdir):
    progress.message(f"note: the config was changed on resuming at step {earlier['step']}: "
                     f"{', '.join(earlier['changes'])}.")
  if changed:
    progress.message("warning: the config differs from the one this workdir was trained with: "
                     + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()))
    if jax.process_index() == 0:
      config_lib.record_changes(workdir, step, changed)


def _abandon(checkpoints: Checkpointer, writer: MetricWriter) -> None:
  """On an error: let checkpoint writes already started finish (they are complete and valid), then close."""
  for finish in (checkpoints.wait, checkpoints.close, writer.close):
    try:
      finish()
    except Exception:  # noqa: BLE001  (the error being raised is the one to report)
      pass


def train(config, workdir: str | Path, preemption: PreemptionGuard | None = None) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the last eval metrics.

  The run holds WORKDIR/.lock throughout. SIGTERM/SIGINT at any moment stop it cleanly; pass a `preemption`
  guard entered earlier (scripts/train.py enters one before JAX starts) to cover the moments before this call.
  """
  check(config)
  flags_warning = xla_flags.use(config.xla_profile)  # before anything below starts JAX
  host_memory.apply()
  workdir = Path(workdir).absolute()
  with contextlib.ExitStack() as stack:
    preemption = preemption or stack.enter_context(PreemptionGuard())
    mesh = parallel.make_mesh(config)
    parallel.check_batch_size(config.data.batch_size, mesh, "data.batch_size")
    parallel.check_batch_size(config.data.eval_batch_size, mesh, "data.eval_batch_size")
    accumulation.check(config.data.batch_size, mesh.shape[parallel.DATA], config.train.grad_accum_steps)
    _make_workdir(workdir)
    if jax.process_index() == 0:  # the process that writes the workdir's files
      stack.enter_context(WorkdirLock(workdir))
    return _train(config, workdir, mesh, preemption, flags_warning)


def _train(config, workdir: Path, mesh, preemption: PreemptionGuard, flags_warning: str | None) -> dict[str, float]:
  changed = config_lib.changes(config, workdir)  # config.json is written once the run is accepted (below)
  compilation.enable(config.compilation_cache, workdir)

  # --- Data. --------------------------------------------------------------------------------------
  train_arrays = experiment.load_split(config, "train")
  test_arrays = experiment.load_split(config, "test")
  sizes = {"train": len(next(iter(train_arrays.values()))), "test": len(next(iter(test_arrays.values())))}
  validate.against_data(config, sizes)  # e.g. a batch larger than the train split
  preprocess = experiment.preprocessor(config, workdir, train_arrays)
  preprocess_state = ops.fit_states(config.data.preprocess, None, workdir)  # fitted stats/tokenizers, kept in checkpoints
  pipeline = Pipeline(train_arrays, batch_size=config.data.batch_size, sharding=parallel.batch_sharding(mesh),
                      preprocess=preprocess, seed=config.seed, shuffle=config.data.shuffle)
  total_steps = config.train.steps if config.train.steps > 0 else config.train.epochs * pipeline.steps_per_epoch
  eval_arrays, eval_preprocess = prepared(test_arrays, preprocess)  # tokenized once, not at every eval

  # --- Model, optimizer, state. -------------------------------------------------------------------
  model = precision.set_compute_dtype(experiment.build_model(config, train_arrays, preprocess),
                                     config.compute_dtype)
  summarize = getattr(model, "summarize", metrics.summarize)
  summary_batch = preprocess({k: v[:16] for k, v in test_arrays.items()})  # fixed examples for summaries
  graphdef, state, tx, schedule = experiment.build_state(config, model, total_steps, mesh)
  learning_rate = jax.jit(schedule)  # for the logs; run eagerly, optax's schedules took ~1 ms of small ops
  steps_with = partial(make_steps, graphdef, tx, mesh, strategy=config.parallel.strategy,
                       input_key=config.data.input_key, label_smoothing=config.label_smoothing,
                       augment=augment.build(config.data.augment), rollback=config.nan_policy == "skip")
  train_step, eval_step = steps_with(grad_accum_steps=config.train.grad_accum_steps)
  accumulates = config.train.grad_accum_steps > 1  # then XLA's count of a step is the step's without it
  flops = throughput.Meter(steps_with(grad_accum_steps=1)[0] if accumulates else train_step, accumulates, mesh.size,
                           config.compute_dtype)

  # --- Resume from the newest readable checkpoint, or start (optionally from another run's params). --
  cc = config.checkpoint
  checkpoints = Checkpointer(workdir / "checkpoints", every=cc.every, keep=cc.keep, best_metric=cc.best_metric,
                             best_mode=cc.best_mode, keep_best=cc.keep_best)
  progress = Progress(total_steps, 0, config.data.batch_size)
  if flags_warning:
    progress.message(flags_warning)
  if _stopped_before_training(preemption, progress, "during start-up"):
    return {}
  _check_resumable(checkpoints, state, changed, workdir)
  restored = checkpoints.restore(state)
  start, progress_meta = 0, {}
  if restored is not None:
    state, meta = restored
    start, progress_meta = int(meta["step"]), meta.get("progress", {})
    progress.message(f"Resuming from step {start} in {checkpoints.directory}.")
    _report_config_changes(progress, workdir, start, changed)
  elif config.init_from:
    state, source_step = _init_from(config.init_from, state, config)
    progress.message(f"Initialized parameters from {config.init_from} (step {source_step}).")
  if jax.process_index() == 0:  # the run is accepted: record its config, and its data to rebuild the model without it
    config_lib.save(config, workdir)
    data_spec.write(workdir, data_spec.describe(config, train_arrays, sizes))
  if _stopped_before_training(preemption, progress, f"before step {start + 1}", restored=start > 0):
    return {}
  if progress_meta.get("stopped_early"):
    total_steps = start  # An early-stopped run is finished.
  writer = MetricWriter(workdir, resume_step=start)
  progress = Progress(total_steps, start, config.data.batch_size)

  # --- Train. ---------------------------------------------------------------------------------------
  stop = min(total_steps, start + config.train.stop_after_steps) if config.train.stop_after_steps else total_steps
  log_every = config.train.log_every or total_steps
  eval_every = config.train.eval_every
  patience = config.train.early_stopping_patience
  best_value = progress_meta.get("best_value")
  bad_evals = progress_meta.get("bad_evals", 0)
  pending: list[dict] = []  # Step metrics still on device.
  fetched: list[dict] = []  # Step metrics on the host, not yet logged.
  timer_step, timer = start, time.perf_counter()
  waited = 0.0  # seconds spent waiting on the input pipeline at the last log
  final: dict[str, float] = {}
  stopped_early = preempted = False
  profiler = profiling.StepProfiler.from_config(config.train, workdir / "tensorboard", start)

  def fetch(first_step: int, keep: int = 0) -> None:
    """Moves pending step metrics but the newest `keep` to the host and applies the NaN policy to them."""
    nonlocal pending
    done, pending = pending[:len(pending) - keep], pending[len(pending) - keep:]
    for offset, m in enumerate(map(named, jax.device_get(done))):
      if m["nonfinite"]:
        overflowed = np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])  # then its update was not finite
        where = (f"non-finite train step {first_step + offset}: loss={m['loss']}, grad_norm={m['grad_norm']}"
                 + (", and its update overflowed the parameters or optimizer state" if overflowed else ""))
        if config.nan_policy == "stop":
          raise TrainingError(f"{where}. No checkpoint holds it; lower optimizer.learning_rate, set "
                              f"optimizer.clip_norm, or set nan_policy='skip'.")
        progress.message(f"warning: {where}; update skipped (nan_policy='skip').")
      fetched.append(m)

  try:
    batches = WaitTimer(pipeline.iterate(start, stop - start))
    with contextlib.closing(batches):
      for step, batch in zip(range(start + 1, stop + 1), batches):
        profiler.before(step)
        dispatched = time.perf_counter()
        state, step_metrics = train_step(state, batch)
        profiler.after(step, step_metrics)
        if step == start + 1:  # The first step compiles (or loads from the compilation cache): time it.
          jax.block_until_ready(step_metrics)
          writer.scalars(step, {"perf/first_step_sec": time.perf_counter() - dispatched})
        pending.append(step_metrics)
        due_eval = (eval_every and step % eval_every == 0) or step == total_steps
        due_log = step % log_every == 0 or step == stop
        sync = due_log or due_eval or len(pending) == MAX_UNAWAITED_STEPS
        preempted = preemption.requested(step, sync)
        if due_log or due_eval or preempted or checkpoints.due(step):  # Never save past an unchecked step.
          fetch(step - len(pending) + 1)
        elif len(pending) == MAX_UNAWAITED_STEPS:  # The deadlock guard.
          fetch(step - len(pending) + 1, keep=1)  # All but the newest step: the device keeps computing meanwhile.
        if due_log and fetched:
          elapsed = time.perf_counter() - timer
          steps_per_sec = (step - timer_step) / elapsed
          finite = [m for m in fetched if not m["nonfinite"]] or fetched
          values = {f"train/{k}": float(np.mean([m[k] for m in finite])) for k in ("loss", "grad_norm")}
          values.update({"train/learning_rate": float(learning_rate(step - 1)),
                         "train/skipped_steps": float(state.skipped_steps) if config.nan_policy == "skip" else 0.0,
                         "perf/steps_per_sec": steps_per_sec,
                         "perf/examples_per_sec": steps_per_sec * config.data.batch_size,
                         "perf/data_wait_fraction": (batches.seconds - waited) / elapsed})
          # FLOP/s and MFU beside examples/s (research/train/throughput.py).
          values.update(flops.scalars(steps_per_sec, state, batch))
          writer.scalars(step, values)
          progress.update(step, {"loss": values["train/loss"]})
          fetched = []
          timer_step, timer, waited = step, time.perf_counter(), batches.seconds

        eval_metrics = None
        if due_eval:
          final = eval_metrics = evaluate(eval_step, state, eval_arrays, config, mesh, eval_preprocess, summarize)
          writer.scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
          progress.message(f"step {step}: " + ", ".join(f"eval {k} {v:.4f}" for k, v in eval_metrics.items()))
          if hasattr(model, "summaries"):  # e.g. generated text, reconstructions: see research/models/__init__.py
            trained = nnx.merge(graphdef, state.params, state.model_state)
            writer.summaries(step, trained.summaries(summary_batch, jax.random.fold_in(state.rng, step)))
          if cc.best_metric:
            if cc.best_metric not in eval_metrics:
              raise ConfigError(f"checkpoint.best_metric={cc.best_metric!r} is not an eval metric of this run; "
                                f"choose one of {', '.join(sorted(eval_metrics))}.")
            value = eval_metrics[cc.best_metric]
            if best_value is None or (value > best_value if cc.best_mode == "max" else value < best_value):
              best_value, bad_evals = value, 0
            else:
              bad_evals += 1
            stopped_early = bool(patience) and bad_evals >= patience
          timer = time.perf_counter()  # Evaluation time is not training throughput.

        force = step == stop or preempted or stopped_early or (eval_metrics is not None and bool(cc.best_metric))
        if force or checkpoints.due(step):  # (its metadata is built only for a save: no Python work per step)
          progress_meta = {"best_value": best_value, "bad_evals": bad_evals, "stopped_early": stopped_early}
          data_position = {**pipeline.position(step), "preprocess_state": preprocess_state}
          try:
            if checkpoints.save(step, state, data_position, force=force, eval_metrics=eval_metrics,
                                progress=progress_meta):
              timer = time.perf_counter()
          except Exception as e:  # Disk full, permissions: name the path; older checkpoints are untouched.
            raise CheckpointError(f"Saving the checkpoint of step {failed_step(e, step)} to {checkpoints.directory} "
                                  f"failed: {brief(e)}. Checkpoints already written are intact: "
                                  f"{checkpoints.steps()}.") from None
        if preempted:
          break
        if stopped_early:
          progress.message(f"Early stopping at step {step}: eval {cc.best_metric} has not improved for {patience} "
                           f"evaluations; best is step {checkpoints.best_step()} ({best_value:.4f}).")
          break
  except BaseException:
    profiler.stop()
    _abandon(checkpoints, writer)
    raise
  profiler.stop()  # (a run that ended inside the window)

  # --- Finish: wait for the last checkpoint write. ---------------------------------------------------
  try:
    checkpoints.wait()
  except Exception as e:
    raise CheckpointError(f"Saving the checkpoint of step {failed_step(e, stop)} to {checkpoints.directory} failed: "
                          f"{brief(e)}. Checkpoints already written are intact: {checkpoints.steps()}.") from None
  checkpoints.close()
  writer.close()
  if preempted:
    progress.message(f"Stopped by {preemption.signal_name} after step {step}; checkpoint saved in "
                     f"{checkpoints.directory}. Rerun the same command to resume.")
  elif stop < total_steps and not stopped_early:
    progress.message(f"Stopped after step {stop} of {total_steps} (train.stop_after_steps); rerun to continue.")
  elif start >= total_steps:
    final = evaluate(eval_step, state, eval_arrays, config, mesh, eval_preprocess, summarize)
    progress.message(f"Already trained to step {start}; eval: " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))
  return final
