"""A trace of a window of training steps, for TensorBoard's Profile tab and Perfetto.

    config.train.profile_steps = 5    # steps to trace; 0 (the default) traces nothing
    config.train.profile_skip = 10    # steps after the run (re)starts before the trace begins

`profile_skip` keeps the first step's compilation and the warm-up out of the
window. The JAX profiler writes WORKDIR/tensorboard/plugins/profile/<time>/:
`<host>.xplane.pb` (TensorBoard's Profile tab, with the `profile` extra) and
`perfetto_trace.json.gz` (ui.perfetto.dev opens it). Each traced step runs
under a `StepTraceAnnotation` named `train` with its step number, which the
Profile tab's overview page draws its step-time graph from, and waits for its
results inside it: the traced window holds all the device work of its steps,
and a step's time is its computation, not its asynchronous dispatch. With
several processes, process 0 traces: they share the workdir, and the profiler
names its files by host.
"""

from __future__ import annotations

from pathlib import Path

import jax

from research.errors import ConfigError


def check(train_config) -> None:
  for key in ("profile_steps", "profile_skip"):
    value = train_config[key]
    if not isinstance(value, int) or value < 0:
      raise ConfigError(f"train.{key} must be an integer >= 0, got {value!r}.")


class StepProfiler:
  """Starts the JAX profiler before step `start + skip + 1` and stops it after `steps` steps."""

  @classmethod
  def from_config(cls, train_config, logdir: str | Path, start: int) -> StepProfiler:
    return cls(logdir, start, train_config.profile_skip, train_config.profile_steps)

  def __init__(self, logdir: str | Path, start: int, skip: int, steps: int):
    self.logdir = str(logdir)
    self.first, self.last = start + skip + 1, start + skip + steps
    self.enabled = steps > 0 and jax.process_index() == 0
    self.active = False

  def before(self, step: int) -> None:
    if self.enabled and step == self.first:
      jax.profiler.start_trace(self.logdir, create_perfetto_trace=True)
      self.active = True

  def run(self, step: int, train_step, *args):
    """`train_step(*args)`; while tracing, marked as step `step` of `train` and awaited inside the marker, so
    that the profiler's step time is the step's computation rather than its asynchronous dispatch. The trace
    ends after the last step of the window."""
    if not self.active:
      return train_step(*args)
    with jax.profiler.StepTraceAnnotation("train", step_num=step):
      outputs = jax.block_until_ready(train_step(*args))
    if step == self.last:
      self.stop()
    return outputs

  def stop(self) -> None:
    """Ends the trace (also when the run ends inside the window: the steps traced so far are kept)."""
    if self.active:
      self.active = False
      jax.profiler.stop_trace()
