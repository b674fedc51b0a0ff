"""Hooks: what the train loop does around its steps, each at its own time.

A hook is a callable `hook(ctx: Context)` with a timing: every N steps (`every`), at each evaluation
(`at_eval`), at the start (`at_start`), at the end (`at_end`) or on an error (`on_error`). The loop body is
the step, the hooks, the checkpoint and the stop; logging, evaluation, best-checkpoint keeping, early
stopping, model summaries and the TensorBoard summaries are all hooks (research/train/hooks_core.py,
research/train/hooks_tensorboard.py). Add one in code, the way Levanter's `add_hook(fn, every=N)` does:

    hooks.add(lambda ctx: print(ctx.step, ctx.step_metrics[-1]["loss"]), every=100)

or from a config by its registered name (`research.registry.HOOKS`), optionally with a period:
`config.hooks.extra = ("param_norm", "my_hook:50")`. A registered entry is a factory `make(config) -> Hook`.

Periodic hooks run in the order they were added, then, when one of them evaluated, the `at_eval` hooks. On a
step where any periodic hook is due the loop first brings every pending step's metrics to the host, so a
hook never makes the loop wait on the device more often than it already does.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from research.errors import ConfigError
from research.registry import HOOKS


@dataclasses.dataclass
class Clock:
  """Seconds the loop spent outside training steps (hooks, checkpoint saves): excluded from throughput."""
  excluded: float = 0.0


@dataclasses.dataclass
class Run:
  """What stays fixed through a run (and the few things that accumulate); every hook sees it as `ctx.run`."""
  config: Any
  workdir: Path
  writer: Any  # research.logging.MetricWriter (process 0 writes)
  progress: Any  # research.logging.Progress
  mesh: Any
  graphdef: Any
  tx: Any  # the optax optimizer
  schedule: Callable[[int], float]  # the learning rate at a step
  abilities: Any  # research.models.interface.Abilities
  start: int  # the step this invocation resumed from (0 on a fresh start)
  stop: int  # this invocation's last step
  total_steps: int
  data_wait: Callable[[], float] = lambda: 0.0  # seconds spent waiting for batches so far
  clock: Clock = dataclasses.field(default_factory=Clock)
  cache: dict = dataclasses.field(default_factory=dict)  # what hooks build once and share (jitted functions)


@dataclasses.dataclass
class Context:
  """What a hook sees at one step; hooks ask for a checkpoint or a stop by setting `save` or `stop`."""
  run: Run
  step: int
  state: Any  # the TrainState after this step (valid until the next step donates it)
  batch: Any = None  # this step's batch, as the pipeline gave it (before on-device augmentation)
  step_metrics: list = dataclasses.field(default_factory=list)  # {"loss", "grad_norm", "nonfinite"} of each step
  eval_metrics: dict | None = None  # set by the evaluation hook
  eval_sums: dict | None = None  # the summed eval metrics behind them (e.g. a "confusion" matrix)
  error: BaseException | None = None  # for on_error hooks
  save: bool = False  # a hook asks for a checkpoint at this step
  stop: str = ""  # a hook asks the loop to stop after this step, saying why


class Hook:
  """A base for hooks with their own state: override `__call__`, and `state`/`restore` to keep it in checkpoints."""
  every: int = 0
  at_eval = at_start = at_end = on_error = False

  def due(self, step: int, run: Run) -> bool:
    return self.every > 0 and step % self.every == 0

  def __call__(self, ctx: Context) -> None:
    raise NotImplementedError

  def state(self) -> dict:
    """JSON values saved with each checkpoint and handed back to `restore` on resuming."""
    return {}

  def restore(self, state: dict) -> None:
    pass


class FunctionHook(Hook):
  """A plain function `fn(ctx)` with a timing."""

  def __init__(self, fn: Callable[[Context], None], *, every: int = 0, at_eval: bool = False,
               at_start: bool = False, at_end: bool = False, on_error: bool = False):
    self.fn, self.every = fn, every
    self.at_eval, self.at_start, self.at_end, self.on_error = at_eval, at_start, at_end, on_error

  def __call__(self, ctx: Context) -> None:
    self.fn(ctx)


class Hooks:
  """The hooks of a run, run at their times; each periodic hook sees the step metrics since it last ran."""

  def __init__(self, hooks: list[Hook] = ()):
    self.hooks: list[Hook] = []
    self._metrics: list[dict] = []  # fetched step metrics not yet seen by every periodic hook
    self._dropped = 0  # how many were dropped from the front of _metrics
    self._seen: dict[int, int] = {}  # id(hook) -> how many step metrics it has seen
    for hook in hooks:
      self.add(hook)

  def add(self, hook: Hook | Callable[[Context], None], **timing) -> Hook:
    """Adds a Hook, or a function with a timing (every=N, at_eval, at_start, at_end, on_error)."""
    if not isinstance(hook, Hook):
      hook = FunctionHook(hook, **timing)
    elif timing:
      raise TypeError("a Hook carries its own timing; pass timing only with a plain function")
    self.hooks.append(hook)
    self._seen[id(hook)] = self._dropped + len(self._metrics)
    return hook

  def due(self, step: int, run: Run) -> bool:
    """Whether a periodic hook runs after `step` (the loop then fetches every pending step's metrics first)."""
    return any(h.due(step, run) for h in self.hooks)

  def record(self, step_metrics: list[dict]) -> None:
    """Step metrics the loop just brought to the host."""
    self._metrics.extend(step_metrics)

  def _call(self, hook: Hook, ctx: Context) -> None:
    seen = self._seen[id(hook)]
    ctx.step_metrics = self._metrics[max(seen - self._dropped, 0):]
    started = time.perf_counter()
    hook(ctx)
    ctx.run.clock.excluded += time.perf_counter() - started
    self._seen[id(hook)] = self._dropped + len(self._metrics)

  def after_step(self, ctx: Context) -> None:
    """The periodic hooks due at `ctx.step`, then the at_eval hooks if one of them evaluated."""
    for hook in [h for h in self.hooks if h.due(ctx.step, ctx.run)]:
      self._call(hook, ctx)
    if ctx.eval_metrics is not None:
      for hook in [h for h in self.hooks if h.at_eval]:
        self._call(hook, ctx)
    periodic = [self._seen[id(h)] for h in self.hooks if h.every > 0] or [self._dropped + len(self._metrics)]
    drop = min(periodic) - self._dropped  # what every periodic hook has seen is not kept
    del self._metrics[:drop]
    self._dropped += drop

  def start(self, ctx: Context) -> None:
    for hook in [h for h in self.hooks if h.at_start]:
      self._call(hook, ctx)

  def end(self, ctx: Context) -> None:
    for hook in [h for h in self.hooks if h.at_end]:
      self._call(hook, ctx)

  def error(self, ctx: Context) -> None:
    """The on_error hooks; an error inside one does not hide the run's own."""
    for hook in [h for h in self.hooks if h.on_error]:
      try:
        self._call(hook, ctx)
      except Exception:  # noqa: BLE001  (the error being raised is the one to report)
        pass

  def state(self) -> dict:
    """Every hook's state, for the checkpoint's metadata."""
    merged = {}
    for hook in self.hooks:
      merged.update(hook.state())
    return merged

  def restore(self, state: dict) -> None:
    for hook in self.hooks:
      hook.restore(state)


def parse_extra(spec: str) -> tuple[str, int | None]:
  """`"name"` or `"name:every"` -> (name, every or None); a bad one is a ConfigError naming the fix."""
  name, _, every = str(spec).partition(":")
  if every and not (every.isdigit() and int(every) > 0):
    raise ConfigError(f"hooks.extra entry {spec!r}: write 'name' or 'name:EVERY' with EVERY a whole number >= 1.")
  if name not in HOOKS:
    raise ConfigError(HOOKS.unknown_message(name, "hooks.extra"))
  return name, int(every) if every else None


def from_names(config) -> list[Hook]:
  """The hooks `config.hooks.extra` names, built by their registered factories, with their periods."""
  built = []
  for spec in config.hooks.extra:
    name, every = parse_extra(spec)
    hook = HOOKS.get(name)(config)
    if every is not None:
      hook.every = every
    built.append(hook)
  return built
