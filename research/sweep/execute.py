"""Runs a sweep's plan: each run is `scripts/train.py` in its own process, in OUT/<run name>/.

OUT/sweep.json records the plan. Rerunning the same sweep command resumes it:
finished runs (their final checkpoint is written, research/runs.py) are
skipped, a run stopped half-way resumes from its checkpoint (train.py does
that), the rest start. `parallel` > 1 runs that many processes at once, each
on its own share of this process's CPUs, so they do not fight over cores.
SIGINT/SIGTERM stop the sweep: each running training gets one SIGTERM, saves a
checkpoint and exits, and no new run starts. Each run's console output goes
to OUT/<run name>/train.log; after each run, research/hparams.py registers it
for TensorBoard's HParams dashboard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from research import atomic, hparams, runs
from research.errors import ConfigError
from research.sweep.plan import Run

PLAN_FILE = "sweep.json"
TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train.py"
INTERRUPTED = 130


def write_plan(out: Path, plan: dict) -> None:
  """Records the plan in OUT/sweep.json; a different sweep already there is an error, not overwritten."""
  path = out / PLAN_FILE
  if path.exists():
    try:
      old = json.loads(path.read_text())
    except (OSError, ValueError):
      old = None
    if old != plan:
      raise ConfigError(f"{out} holds another sweep ({path}: config {(old or {}).get('config')!r}, "
                        f"{len((old or {}).get('runs', []))} runs). Rerun that sweep's exact command to resume it, "
                        f"or give this sweep a new --out.")
    return
  out.mkdir(parents=True, exist_ok=True)
  atomic.write_text(path, json.dumps(plan, indent=2) + "\n")


def cpu_shares(parallel: int) -> list[set[int]]:
  """This process's CPUs split into `parallel` groups (one CPU each, shared round-robin, if there are fewer)."""
  cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
  if not cpus or parallel <= 1:
    return [set(cpus)] if cpus else [set()]
  if parallel >= len(cpus):
    return [{cpus[i % len(cpus)]} for i in range(parallel)]
  size = len(cpus) // parallel
  return [set(cpus[i * size:(i + 1) * size]) for i in range(parallel)]


@dataclasses.dataclass
class Running:
  run: Run
  process: subprocess.Popen
  slot: int
  started: float


def _summary(workdir: Path) -> str:
  """`eval/accuracy 0.9812 (best 0.9820)` for each eval metric of a run."""
  run = runs.read(workdir)
  final, best = run.final, run.best
  return ", ".join(f"{tag} {final[tag]:.4g} (best {best[tag][1]:.4g})" for tag in best) or "no eval metrics"


def _last_line(log: Path) -> str:
  try:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
  except OSError:
    return ""
  errors = [line for line in lines if line.startswith("error:")]
  return (errors or lines or [""])[-1].strip()


class Sweep:
  """Starts, watches and stops the training processes of a plan."""

  def __init__(self, out: Path, config: str, fixed: list[str], planned: list[Run], parallel: int = 1,
               stream=None):
    self.out, self.config, self.fixed, self.planned = out, config, fixed, planned
    self.parallel = max(1, parallel)
    self.stream = stream or sys.stdout
    self.stopping = 0  # signals received
    self.failed: list[str] = []
    self.unfinished: list[str] = []
    self.active: list[Running] = []

  def say(self, text: str) -> None:
    self.stream.write(text + "\n")
    self.stream.flush()

  def _finished(self, run: Run) -> bool:
    workdir = self.out / run.name
    return (workdir / "config.json").is_file() and runs.read(workdir).finished

  def _start(self, run: Run, slot: int, cpus: set[int]) -> Running:
    workdir = self.out / run.name
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(TRAIN_SCRIPT), "--config", self.config, "--workdir", str(workdir),
               *self.fixed, *run.overrides]
    with open(workdir / "train.log", "a") as log:
      log.write(f"$ {' '.join(command)}\n")
      log.flush()
      process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # its own session: its signals come from this sweep
    if cpus:  # pinned while the interpreter starts, before JAX sizes its thread pools; its threads inherit it
      with contextlib.suppress(OSError):
        os.sched_setaffinity(process.pid, cpus)
    return Running(run, process, slot, time.time())

  def _ended(self, running: Running, position: str) -> None:
    run, workdir = running.run, self.out / running.run.name
    code, seconds = running.process.returncode, time.time() - running.started
    if code != 0 and (workdir / "config.json").is_file():
      hparams.record_run(workdir)  # a run that failed (a finished or stopped run registered itself)
    if code == 0 and self._finished(run):
      self.say(f"{position} {run.name}: done in {seconds:.0f} s: {_summary(workdir)}")
      return
    if code == 0:
      self.unfinished.append(run.name)
      self.say(f"{position} {run.name}: stopped after {seconds:.0f} s; rerun the sweep to continue it")
      return
    self.failed.append(run.name)
    self.say(f"{position} {run.name}: failed (exit {code}): {_last_line(workdir / 'train.log')} "
             f"[log: {workdir / 'train.log'}]")

  def _signal(self, signum, frame) -> None:
    self.stopping += 1
    for running in self.active:
      try:  # one SIGTERM: the run saves a checkpoint and exits; a second signal here kills at once
        os.killpg(running.process.pid, signal.SIGTERM if self.stopping == 1 else signal.SIGKILL)
      except ProcessLookupError:
        pass

  def run(self) -> int:
    """Runs the plan; returns the exit code: 0 all finished, 1 some failed, 130 interrupted."""
    total = len(self.planned)
    position = {run.name: f"[{i}/{total}]" for i, run in enumerate(self.planned, 1)}
    pending = []
    for run in self.planned:
      if self._finished(run):
        hparams.record_run(self.out / run.name)  # (idempotent: registers runs of an older sweep too)
        self.say(f"{position[run.name]} {run.name}: finished, skipped")
      else:
        pending.append(run)
    shares = cpu_shares(self.parallel)
    previous = {s: signal.signal(s, self._signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
      while (pending and not self.stopping) or self.active:
        while pending and not self.stopping and len(self.active) < self.parallel:
          slot = min(set(range(self.parallel)) - {r.slot for r in self.active})
          run = pending.pop(0)
          self.active.append(self._start(run, slot, shares[slot % len(shares)]))
          self.say(f"{position[run.name]} {run.name}: started (log: {self.out / run.name / 'train.log'})")
        time.sleep(0.2)
        for running in [r for r in self.active if r.process.poll() is not None]:
          self.active.remove(running)
          self._ended(running, position[running.run.name])
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)
    left = [run.name for run in pending] + self.unfinished
    if self.stopping:
      self.say(f"Interrupted: {len(left) + len(self.failed)} of {total} runs are not finished. Rerun the same "
               f"command to resume the sweep.")
      return INTERRUPTED
    if self.failed:
      self.say(f"{len(self.failed)} of {total} runs failed: {', '.join(self.failed)}. Their train.log says why; "
               f"rerun the same command to retry them (finished runs are skipped).")
      return 1
    if left:
      self.say(f"{len(left)} of {total} runs stopped before their end; rerun the same command to continue them.")
      return 1
    self.say(f"All {total} runs finished in {self.out}. Compare them: python scripts/runs.py {self.out}")
    return 0
