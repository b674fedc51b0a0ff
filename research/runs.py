"""What a run's workdir says about it: its config, final and best metrics, progress and wall time.

Everything is read from the files training writes (config.json, dataset.json,
metrics.jsonl, checkpoints/, tensorboard/), so it works on any workdir,
finished, stopped or still running. scripts/runs.py tables and plots runs,
research/hparams.py registers them for TensorBoard's HParams dashboard, and
scripts/sweep.py skips the runs that are `finished`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

from research.errors import ConfigError

HIGHER_IS_BETTER = ("accuracy", "precision", "recall", "f1", "bleu", "auc")  # other eval metrics are losses
EVENTS_TIME = re.compile(r"events\.out\.tfevents\.(\d+)\.")  # tensorboardX names its files by creation time


@dataclasses.dataclass(frozen=True)
class Run:
  workdir: Path
  config: dict  # dotted key -> value, from config.json
  curves: dict[str, list[tuple[int, float]]]  # tag -> [(step, value)], from metrics.jsonl
  step: int  # the last step logged
  total_steps: int | None  # None when config.json or dataset.json is missing
  finished: bool
  start_time: float | None  # seconds since the epoch: the run's first TensorBoard file
  end_time: float | None  # the last write to metrics.jsonl

  @property
  def name(self) -> str:
    return self.workdir.name

  @property
  def final(self) -> dict[str, float]:
    """The last logged value of every scalar."""
    return {tag: points[-1][1] for tag, points in self.curves.items()}

  @property
  def best(self) -> dict[str, tuple[int, float]]:
    """Each eval metric's best logged (step, value): the highest accuracy, the lowest loss."""
    out = {}
    for tag, points in self.curves.items():
      finite = [p for p in points if math.isfinite(p[1])]
      if tag.startswith("eval/") and finite:
        pick = max if higher_is_better(tag, self.config) else min
        out[tag] = pick(finite, key=lambda p: p[1])  # the first step that reached it
    return out

  @property
  def wall_time(self) -> float | None:
    """Seconds from the first TensorBoard file to the last metric, pauses between resumes included."""
    if self.start_time is None or self.end_time is None:
      return None
    return max(self.end_time - self.start_time, 0.0)


def higher_is_better(tag: str, config: dict) -> bool:
  """The config's checkpoint.best_metric follows its best_mode; others go by name (accuracy up, losses down)."""
  name = tag.split("/", 1)[-1]
  if name == config.get("checkpoint.best_metric"):
    return config.get("checkpoint.best_mode", "max") == "max"
  return any(word in name for word in HIGHER_IS_BETTER)


def flat(nested: dict, prefix: str = "") -> dict:
  """{'optimizer': {'name': 'adam'}} -> {'optimizer.name': 'adam'}."""
  out = {}
  for key, value in nested.items():
    if isinstance(value, dict) and value:
      out.update(flat(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _json(path: Path) -> dict | None:
  try:
    value = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  return value if isinstance(value, dict) else None


def curves(workdir: Path) -> dict[str, list[tuple[int, float]]]:
  """metrics.jsonl as tag -> [(step, value)]; a torn last line (a killed run) is skipped."""
  out: dict[str, list[tuple[int, float]]] = {}
  try:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
  except OSError:
    return out
  for line in lines:
    try:
      record = json.loads(line)
    except ValueError:
      continue
    step = record.get("step")
    for tag, value in record.items():
      if tag != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
        out.setdefault(tag, []).append((int(step), float(value)))
  return out


def total_steps(config: dict, dataset: dict | None) -> int | None:
  """The step a run ends at, as the training loop counts it: train.steps, else epochs x full batches."""
  if config.get("train.steps", 0) > 0:
    return int(config["train.steps"])
  train_examples = ((dataset or {}).get("examples") or {}).get("train")
  batch_size = config.get("data.batch_size")
  if not train_examples or not batch_size or "train.epochs" not in config:
    return None
  return int(config["train.epochs"]) * (int(train_examples) // int(batch_size))


def checkpoint_steps(workdir: Path) -> list[int]:
  """Steps of the complete checkpoints (Orbax renames a step's folder into place once it is written)."""
  try:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit() and p.is_dir())
  except OSError:
    return []


def _stopped_early(workdir: Path, step: int) -> bool:
  meta = _json(workdir / "checkpoints" / str(step) / "meta" / "metadata") or {}
  return bool((meta.get("progress") or {}).get("stopped_early"))


def _start_time(workdir: Path) -> float | None:
  stamps = [int(m.group(1)) for p in (workdir / "tensorboard").glob("events.out.tfevents.*")
            if (m := EVENTS_TIME.match(p.name))]
  return float(min(stamps)) if stamps else None


def read(workdir: str | Path) -> Run:
  """The run in `workdir` (a workdir of scripts/train.py: it must hold config.json)."""
  workdir = Path(workdir)
  config = _json(workdir / "config.json")
  if config is None:
    raise ConfigError(f"{workdir} holds no readable config.json: give the --workdir of a training run.")
  config = flat(config)
  logged = curves(workdir)
  steps = checkpoint_steps(workdir)
  total = total_steps(config, _json(workdir / "dataset.json"))
  finished = bool(steps) and ((total is not None and steps[-1] >= total) or _stopped_early(workdir, steps[-1]))
  metrics_file = workdir / "metrics.jsonl"
  end_time = metrics_file.stat().st_mtime if metrics_file.exists() else None
  last_step = max((points[-1][0] for points in logged.values()), default=0)
  return Run(workdir, config, logged, last_step, total, finished, _start_time(workdir), end_time)


def find(directory: str | Path) -> list[Path]:
  """The workdirs of training runs in `directory` (itself, or any folder below it that holds config.json)."""
  directory = Path(directory)
  if not directory.is_dir():
    raise ConfigError(f"{directory} does not exist: give a sweep's directory or a training run's --workdir.")
  if (directory / "config.json").is_file():
    return [directory]
  found = sorted(p.parent for p in directory.rglob("config.json"))
  found = [p for p in found if not any(other in p.parents for other in found)]  # not a folder inside a run
  if not found:
    raise ConfigError(f"{directory} holds no training runs (no config.json below it): give a sweep's directory "
                      f"(scripts/sweep.py --out) or a training run's --workdir.")
  return found


def differing(runs: list[Run]) -> list[str]:
  """The config keys whose values differ between runs, in config order (one run: none)."""
  keys = list(dict.fromkeys(k for run in runs for k in run.config))
  missing = object()
  return [k for k in keys if len({json.dumps(run.config.get(k, missing), sort_keys=True, default=str)
                                  for run in runs}) > 1]
