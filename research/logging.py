"""Metric writers: TensorBoard event files, `metrics.jsonl`, and a console progress bar.

Every scalar goes to both files under the same tag, e.g. `train/loss`,
`eval/accuracy`, `train/learning_rate`, `perf/steps_per_sec`; images, text and
histograms go to TensorBoard, and their tags to the jsonl.
Only process 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Iterator

import jax
import numpy as np

from research import atomic
from research.errors import WorkdirWriteError


@contextlib.contextmanager
def _naming(path: Path, step: int | None) -> Iterator[None]:
  """An OSError (a full disk, lost permissions) as one line naming the file and the step."""
  try:
    yield
  except OSError as e:
    at = f" at step {step}" if step is not None else ""
    raise WorkdirWriteError(f"Writing {path}{at} failed: {e.strerror or e}. Free space or fix permissions, then "
                            f"rerun the same command to resume from the last checkpoint.") from None


class MetricWriter:
  """Writes scalars to WORKDIR/tensorboard/ (tensorboardX, no TensorFlow) and WORKDIR/metrics.jsonl."""

  def __init__(self, workdir: str | Path, resume_step: int = 0):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    SummaryWriter = summary_writer_class()
    workdir = Path(workdir)
    self.jsonl_path, self.tb_path = workdir / "metrics.jsonl", workdir / "tensorboard"
    with _naming(self.jsonl_path, resume_step):
      _truncate_after(self.jsonl_path, resume_step)
      self.jsonl = open(self.jsonl_path, "a")
    with _naming(self.tb_path, resume_step):
      self.tb = SummaryWriter(str(self.tb_path), purge_step=resume_step or None)

  def _write(self, step: int, record: dict) -> None:
    with _naming(self.jsonl_path, step):
      self.jsonl.write(json.dumps({"step": step, **record}) + "\n")
      self.jsonl.flush()

  def scalars(self, step: int, values: dict[str, float], *, jsonl: bool = True) -> None:
    """`jsonl=False`: TensorBoard only, for values logged ahead of the run (metrics.jsonl is what the run did)."""
    if not self.active:
      return
    with _naming(self.tb_path, step):
      for tag, value in values.items():
        self.tb.add_scalar(tag, value, step)
    if jsonl:
      self._write(step, values)

  def summaries(self, step: int, values: dict) -> None:
    """Writes text (str) and images (float [H, W, C] in [0, 1]) to TensorBoard, and their tags to the jsonl."""
    if not self.active:
      return
    with _naming(self.tb_path, step):
      for tag, value in values.items():
        if isinstance(value, str):
          self.tb.add_text(tag, value, step)
        else:
          self.tb.add_image(tag, np.asarray(value), step, dataformats="HWC")
    self._write(step, {"summaries": sorted(values)})

  def histograms(self, step: int, values: dict[str, dict]) -> None:
    """Writes histograms given as {tag: {min, max, num, sum, sum_squares, bucket_limits, bucket_counts}} (computed
    on the device, research/train/diagnostics.py), and their tags to the jsonl."""
    if not self.active:
      return
    with _naming(self.tb_path, step):
      for tag, h in values.items():
        self.tb.add_histogram_raw(tag, float(h["min"]), float(h["max"]), int(h["num"]), float(h["sum"]),
                                  float(h["sum_squares"]), np.asarray(h["bucket_limits"], np.float64).tolist(),
                                  np.asarray(h["bucket_counts"], np.float64).tolist(), step)
    self._write(step, {"histograms": sorted(values)})

  def flush(self) -> None:
    if self.active:
      with _naming(self.tb_path, None):
        self.tb.flush()

  def close(self) -> None:
    if self.active:
      with _naming(self.tb_path, None):
        self.tb.close()
        self.jsonl.close()


def summary_writer_class():
  """tensorboardX's SummaryWriter, imported lazily (keeps `import research` light) and without PyTorch.

  tensorboardX imports torch, when it is installed, only to accept torch tensors: ~2 s of every run's
  start-up. Hiding torch during that import skips it; a later `import torch` works as usual.
  """
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
  try:
    from tensorboardX import SummaryWriter
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter


def _truncate_after(path: Path, step: int) -> None:
  """On resume, drops lines logged after the checkpoint: they will be logged again."""
  if not path.exists():
    return
  keep = [line for line in path.read_text().splitlines() if line.strip() and _step_of(line) <= step]
  atomic.write_text(path, "".join(line + "\n" for line in keep))  # a crash here keeps the old log


def _step_of(line: str) -> float:
  try:
    return json.loads(line)["step"]
  except (ValueError, KeyError, TypeError):
    return math.inf  # A torn last line from a crash is dropped.


class Progress:
  """One console line: step, percent, loss, throughput and ETA; redrawn in place on a terminal."""

  def __init__(self, total_steps: int, start_step: int, batch_size: int, stream=None):
    self.total, self.start, self.batch_size = total_steps, start_step, batch_size
    self.stream = stream or sys.stderr  # (looked up now, so a redirected stderr gets the output)
    self.tty = self.stream.isatty()
    self.active = jax.process_index() == 0
    self.t0 = time.perf_counter()

  def update(self, step: int, values: dict[str, float]) -> None:
    if not self.active:
      return
    elapsed = time.perf_counter() - self.t0
    rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    width = 24
    filled = int(width * step / max(self.total, 1))
    bar = "#" * filled + "-" * (width - filled)
    shown = " ".join(f"{k.split('/')[-1]} {v:.4g}" for k, v in values.items())
    line = (f"[{bar}] {step}/{self.total} {100 * step / max(self.total, 1):3.0f}% | {shown} | "
            f"{rate:.1f} steps/s {rate * self.batch_size:,.0f} ex/s | ETA {_clock(eta)}")
    self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
    self.stream.flush()

  def message(self, text: str) -> None:
    if self.active:
      self.stream.write(("\n" if self.tty else "") + text + "\n")
      self.stream.flush()


def _clock(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
