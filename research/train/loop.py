"""The training loop: one function, read top to bottom.

    config -> data -> model + optimizer -> TrainState -> (resume) -> hooks -> step, hooks, checkpoint, stop

Logging, evaluation, summaries, best checkpoints and early stopping are hooks (research/train/hooks.py).
WORKDIR/run.json records the command, code, packages, devices, times and outcome (research/run_record.py).

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
from research import hparams, host_memory, parallel, run_record, sharding, validate, xla_flags
from research.checkpoint import Checkpointer, failed_step
from research.data import augment, clean, ops
from research.data import spec as data_spec
from research.data.pipeline import Pipeline, WaitTimer, prepared
from research.errors import CheckpointError, ConfigError, DataUnavailableError, TrainingError, brief
from research.logging import MetricWriter, Progress
from research.models import precision
from research.models.interface import abilities as abilities_of
from research.train import accumulation, compilation, experiment, hooks_core, hooks_tensorboard, profiling, throughput
from research.train import evaluate as evaluate_lib
from research.train import hooks as hooks_lib
from research.train.hooks_core import MAX_UNAWAITED_STEPS, evaluate
from research.train.lock import WorkdirLock
from research.train.preemption import PreemptionGuard
from research.train.step import STRATEGIES, make_steps, named

NAN_POLICIES = ("stop", "skip")


def check(config) -> None:
  """Fails fast, before any data is loaded, on names and values the run cannot use."""
  validate.check(config)  # registry names, and every value against its meaning (research/validate.py)
  ops.parse(config.data.preprocess)
  augment.build(config.data.augment)
  clean.parse(config.data.clean)
  if config.parallel.strategy not in STRATEGIES:
    raise ConfigError(f"parallel.strategy={config.parallel.strategy!r}; choose one of {', '.join(STRATEGIES)}.")
  sharding.rules(config)  # each regex compiles and each spec names mesh axes
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
    accumulation.check(config.data.batch_size, parallel.batch_ways(mesh), config.train.grad_accum_steps)
    _make_workdir(workdir)
    if jax.process_index() == 0:  # the process that writes the workdir's files
      stack.enter_context(WorkdirLock(workdir))
    record = stack.enter_context(run_record.recording(workdir))  # WORKDIR/run.json
    return _train(config, workdir, mesh, preemption, flags_warning, record)


def _train(config, workdir: Path, mesh, preemption: PreemptionGuard, flags_warning: str | None,
           record: run_record.Record) -> dict[str, float]:
  changed = config_lib.changes(config, workdir)  # config.json is written once the run is accepted (below)
  compilation.enable(config.compilation_cache, workdir)

  # --- Data. --------------------------------------------------------------------------------------
  try:
    train_arrays, test_arrays = experiment.load_split(config, "train"), experiment.load_split(config, "test")
  except DataUnavailableError:  # a stop signal cancels a download under way (pyarrow stops on it): that is the stop
    if _stopped_before_training(preemption, Progress(0, 0, config.data.batch_size), "while loading data"):
      record.status = "stopped"
      return {}
    raise
  sizes = {"train": len(next(iter(train_arrays.values()))), "test": len(next(iter(test_arrays.values())))}
  validate.against_data(config, sizes)  # e.g. a batch larger than the train split
  preprocess = experiment.preprocessor(config, workdir, train_arrays)
  preprocess_state = ops.fit_states(config.data.preprocess, None, workdir)  # fitted stats/tokenizers, kept in checkpoints
  pipeline = Pipeline(train_arrays, batch_size=config.data.batch_size, sharding=parallel.batch_sharding(mesh),
                      preprocess=preprocess, seed=config.seed, shuffle=config.data.shuffle)
  total_steps = config.train.steps if config.train.steps > 0 else config.train.epochs * pipeline.steps_per_epoch
  eval_arrays, eval_preprocess = prepared(test_arrays, preprocess)  # tokenized once, not at every eval

  # --- Model, optimizer, state. -------------------------------------------------------------------
  make_model = experiment.model_factory(config, train_arrays, preprocess, config.compute_dtype)
  summary_batch = preprocess({k: v[:16] for k, v in test_arrays.items()})  # fixed examples for summaries
  graphdef, state, tx, schedule = experiment.build_state(config, make_model, total_steps, mesh)
  abilities = abilities_of(nnx.merge(graphdef, state.params, state.model_state))  # its loss, summaries, ...: interface.py
  learning_rate = jax.jit(schedule)  # for the logs; run eagerly, optax's schedules took ~1 ms of small ops
  steps_with = partial(make_steps, graphdef, tx, mesh, strategy=config.parallel.strategy,
                       input_key=config.data.input_key, label_smoothing=config.label_smoothing,
                       augment=augment.build(config.data.augment), rollback=config.nan_policy == "skip",
                       state_sharding=sharding.of(state))
  train_step, eval_step = steps_with(grad_accum_steps=config.train.grad_accum_steps)
  accumulates = config.train.grad_accum_steps > 1  # then XLA's count of a step is the step's without it
  flops = throughput.Meter(steps_with(grad_accum_steps=1)[0] if accumulates else train_step, accumulates, mesh.size,
                           config.compute_dtype)

  # --- Resume from the newest readable checkpoint, or start (optionally from another run's params). --
  cc = config.checkpoint
  checkpoints = Checkpointer(workdir / "checkpoints", every=cc.every, keep=cc.keep, best_metric=cc.best_metric,
                             best_mode=cc.best_mode, keep_best=cc.keep_best)
  progress = Progress(total_steps, 0, config.data.batch_size)
  for warning in (flags_warning, parallel.tensor_warning(config, mesh)):
    if warning:
      progress.message(warning)
  if _stopped_before_training(preemption, progress, "during start-up"):
    record.status = "stopped"
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
    record.status = "stopped"
    return {}
  if progress_meta.get("stopped_early"):
    total_steps = start  # An early-stopped run is finished.
  writer = MetricWriter(workdir, resume_step=start)
  progress = Progress(total_steps, start, config.data.batch_size)

  # --- Hooks: logging, evaluation, summaries, best checkpoints, early stopping (research/train/hooks.py). ------
  stop = min(total_steps, start + config.train.stop_after_steps) if config.train.stop_after_steps else total_steps
  run = hooks_lib.Run(config=config, workdir=workdir, writer=writer, progress=progress, mesh=mesh, graphdef=graphdef,
                      tx=tx, schedule=learning_rate, abilities=abilities, start=start, stop=stop,
                      total_steps=total_steps)
  if config.hooks.confusion_matrix and abilities.loss is None and config.data.label_key in eval_arrays:
    eval_step = evaluate_lib.with_confusion(eval_step, graphdef, mesh, sharding.of(state), config.data.input_key,
                                            config.data.label_key)
  evaluation = lambda state, summarize: evaluate(eval_step, state, eval_arrays, config, mesh, eval_preprocess,
                                                 summarize)
  hooks = _hooks(config, run, evaluation, summary_batch, flops)
  hooks.restore(progress_meta)

  # --- Train: the step, the hooks, the checkpoint, the stop. ----------------------------------------------
  pending: list = []  # Step metrics still on device.
  final: dict[str, float] = {}
  preempted = False
  ctx = hooks_lib.Context(run, start, state)
  profiler = profiling.StepProfiler.from_config(config.train, workdir / "tensorboard", start)

  def fetch(first_step: int, keep: int = 0) -> None:
    """Moves pending step metrics but the newest `keep` to the host, applies the NaN policy, hands them to hooks."""
    nonlocal pending
    done, pending = pending[:len(pending) - keep], pending[len(pending) - keep:]
    fetched = list(map(named, jax.device_get(done)))
    for offset, m in enumerate(fetched):
      if m["nonfinite"]:
        overflowed = np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])  # then its update was not finite
        where = (f"non-finite train step {first_step + offset}: loss={m['loss']}, grad_norm={m['grad_norm']}"
                 + (", and its update overflowed the parameters or optimizer state" if overflowed else ""))
        if config.nan_policy == "stop":
          raise TrainingError(f"{where}. No checkpoint holds it; lower optimizer.learning_rate, set "
                              f"optimizer.clip_norm, or set nan_policy='skip'.")
        progress.message(f"warning: {where}; update skipped (nan_policy='skip').")
    hooks.record(fetched)

  try:
    hooks.start(ctx)
    batches = WaitTimer(pipeline.iterate(start, stop - start))
    run.data_wait = lambda: batches.seconds
    with contextlib.closing(batches):
      for step, batch in zip(range(start + 1, stop + 1), batches):
        profiler.before(step)
        dispatched = time.perf_counter()
        state, step_metrics = profiler.run(step, train_step, state, batch)
        if step == start + 1:  # The first step compiles (or loads from the compilation cache): time it.
          jax.block_until_ready(step_metrics)
          writer.scalars(step, {"perf/first_step_sec": time.perf_counter() - dispatched})
          host_memory.release_free_pages()  # what compiling freed, which the steps never reuse
        pending.append(step_metrics)
        hooks_due = hooks.due(step, run)
        # (every process reaches these steps together; at each, the loop waits for the device anyway)
        preempted = preemption.requested(
            sync=hooks_due or checkpoints.due(step) or len(pending) == MAX_UNAWAITED_STEPS)
        if hooks_due or preempted or checkpoints.due(step):  # Never save past an unchecked step.
          fetch(step - len(pending) + 1)
        elif len(pending) == MAX_UNAWAITED_STEPS:  # The deadlock guard.
          fetch(step - len(pending) + 1, keep=1)  # All but the newest step: the device keeps computing meanwhile.

        ctx = hooks_lib.Context(run, step, state, batch)
        if hooks_due:
          hooks.after_step(ctx)
          final = ctx.eval_metrics or final

        force = step == stop or preempted or bool(ctx.stop) or ctx.save
        if force or checkpoints.due(step):  # (its metadata is built only for a save: no Python work per step)
          data_position = {**pipeline.position(step), "preprocess_state": preprocess_state}
          saving = time.perf_counter()
          try:
            if checkpoints.save(step, state, data_position, force=force, eval_metrics=ctx.eval_metrics,
                                progress=hooks.state()):
              run.clock.excluded += time.perf_counter() - saving  # Saving is not training throughput.
          except Exception as e:  # Disk full, permissions: name the path; older checkpoints are untouched.
            raise CheckpointError(f"Saving the checkpoint of step {failed_step(e, step)} to {checkpoints.directory} "
                                  f"failed: {brief(e)}. Checkpoints already written are intact: "
                                  f"{checkpoints.steps()}.") from None
        if preempted:
          break
        if ctx.stop:
          progress.message(ctx.stop)
          break
  except BaseException as e:
    profiler.stop()
    hooks.error(hooks_lib.Context(run, ctx.step, state, error=e))  # (a failed step may have donated `state`)
    _abandon(checkpoints, writer)
    raise
  profiler.stop()  # (a run that ended inside the window)
  hooks.end(hooks_lib.Context(run, stop, state, eval_metrics=final or None))

  # --- Finish: wait for the last checkpoint write. ---------------------------------------------------
  try:
    checkpoints.wait()
  except Exception as e:
    raise CheckpointError(f"Saving the checkpoint of step {failed_step(e, stop)} to {checkpoints.directory} failed: "
                          f"{brief(e)}. Checkpoints already written are intact: {checkpoints.steps()}.") from None
  checkpoints.close()
  writer.close()
  if jax.process_index() == 0:  # the run's config and best metrics for TensorBoard's HParams tab (from its files)
    hparams.record_run(workdir)
  if preempted or ctx.stop or stop < total_steps:
    record.status = "stopped"
  if preempted:
    progress.message(f"Stopped by {preemption.signal_name} after step {step}; checkpoint saved in "
                     f"{checkpoints.directory}. Rerun the same command to resume.")
  elif stop < total_steps and not ctx.stop:
    progress.message(f"Stopped after step {stop} of {total_steps} (train.stop_after_steps); rerun to continue.")
  elif start >= total_steps:
    final = evaluation(state, abilities.summarize)
    progress.message(f"Already trained to step {start}; eval: " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()))
  return final


def _hooks(config, run: hooks_lib.Run, evaluation, summary_batch, flops: throughput.Meter) -> hooks_lib.Hooks:
  """The run's hooks, in the order they run at a step: log, evaluate, then at each evaluation its log, the
  model's summaries, the confusion matrix, best checkpoints and early stopping; then the optional ones."""
  hooks = hooks_lib.Hooks([hooks_core.LogTrain(config.train.log_every or run.total_steps, run, flops.scalars),
                           hooks_core.Evaluate(config.train.eval_every, evaluation)])
  hooks.add(hooks_core.log_eval, at_eval=True)
  if config.hooks.model_summaries and run.abilities.summaries is not None:
    hooks.add(hooks_core.ModelSummaries(summary_batch))
  for hook in hooks_tensorboard.configured(config) + hooks_lib.from_names(config):
    hooks.add(hook)
  if config.checkpoint.best_metric:
    best = hooks.add(hooks_core.BestMetric(config.checkpoint.best_metric, config.checkpoint.best_mode))
    if config.train.early_stopping_patience:
      hooks.add(hooks_core.EarlyStopping(best, config.train.early_stopping_patience))
  return hooks
