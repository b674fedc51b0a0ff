"""Registers a run for TensorBoard's HParams dashboard: its whole config as hparams, its final and best metrics.

    from research import hparams
    hparams.record_run("runs/mnist_mlp")   # any workdir, finished or not; again at any time

`record_run` writes one event file, WORKDIR/tensorboard/events.out.tfevents.hparams
(replaced whole on every call, so calling it again never duplicates anything):

- the session start: every config key, flattened (`optimizer.learning_rate`),
  with tuples and lists as their JSON text (`[512, 256]`);
- `best/eval/<metric>` scalars: each eval metric's best value, at the step it
  was reached (research/runs.py says which direction is best);
- the session end (status success) once the run is finished; a run stopped
  half-way, or still going, shows status unknown until then.

The final metrics are the scalars the run logged itself (`eval/accuracy`,
`train/loss`, ...): the dashboard shows each tag's last value. No experiment
summary is written, so TensorBoard builds the table's columns from all runs'
hparams together rather than from whichever run it happened to read first.
Imports tensorboard's protos only, never TensorFlow.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from research import runs

FILE = "events.out.tfevents.hparams"  # sorts after tensorboardX's `events.out.tfevents.<time>.<host>` files


def flatten(config: dict) -> dict[str, str | float | bool]:
  """A (nested or dotted) config as HParams values: numbers, bools and strings; anything else as JSON text."""
  out = {}
  for key, value in runs.flat(config).items():
    if isinstance(value, (bool, str)):
      out[key] = value
    elif isinstance(value, (int, float)):
      out[key] = float(value)
    else:
      out[key] = json.dumps(value)  # tuples/lists, None, {}: one string a table can show and compare
  return out


def _event(summary=None, step: int = 0, wall_time: float | None = None, **fields):
  from tensorboard.compat.proto import event_pb2

  return event_pb2.Event(wall_time=time.time() if wall_time is None else wall_time, step=step, summary=summary,
                         **fields)


def _plugin_summary(tag: str, **data):
  """A Summary holding the hparams plugin's data (`session_start_info=...` or `session_end_info=...`)."""
  from tensorboard.compat.proto import summary_pb2
  from tensorboard.plugins.hparams import metadata, plugin_data_pb2

  content = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, **data)
  return summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(
      content))])


def events(config: dict, metrics: dict[str, tuple[int, float]], *, start_time: float | None = None,
           end_time: float | None = None) -> list:
  """The event protos of a run's registration: session start, `metrics` as scalars (tag -> (step, value)), and a
  session end if `end_time` is given."""
  from tensorboard.compat.proto import summary_pb2
  from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

  start = plugin_data_pb2.SessionStartInfo(start_time_secs=start_time or time.time())
  for key, value in flatten(config).items():
    if isinstance(value, bool):
      start.hparams[key].bool_value = value
    elif isinstance(value, float):
      start.hparams[key].number_value = value
    else:
      start.hparams[key].string_value = value
  out = [_event(file_version="brain.Event:2"),
         _event(_plugin_summary(metadata.SESSION_START_INFO_TAG, session_start_info=start))]
  for tag, (step, value) in metrics.items():
    out.append(_event(summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=value)]), step))
  if end_time is not None:
    end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=end_time)
    out.append(_event(_plugin_summary(metadata.SESSION_END_INFO_TAG, session_end_info=end)))
  return out


def write(workdir: str | Path, config: dict, metrics: dict[str, tuple[int, float]], *,
          start_time: float | None = None, end_time: float | None = None) -> Path:
  """Writes (replaces) WORKDIR/tensorboard/events.out.tfevents.hparams; returns its path."""
  from tensorboard.summary.writer.record_writer import RecordWriter

  workdir = Path(workdir)
  target = workdir / "tensorboard" / FILE
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = workdir / f".{FILE}.{os.getpid()}.tmp"  # outside tensorboard/: a server never reads it half-written
  try:
    with open(tmp, "wb") as f:
      writer = RecordWriter(f)
      for event in events(config, metrics, start_time=start_time, end_time=end_time):
        writer.write(event.SerializeToString())
    os.replace(tmp, target)
  finally:
    tmp.unlink(missing_ok=True)
  return target


def record_run(workdir: str | Path) -> Path:
  """Registers the run in `workdir` from its files (config.json, metrics.jsonl, checkpoints/): idempotent, and
  usable on any workdir of scripts/train.py, to register runs trained before this existed."""
  run = runs.read(workdir)
  best = {f"best/{tag}": point for tag, point in run.best.items()}
  return write(run.workdir, run.config, best, start_time=run.start_time,
               end_time=(run.end_time or time.time()) if run.finished else None)
