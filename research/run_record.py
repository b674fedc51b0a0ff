"""WORKDIR/run.json: what ran, where, with which code, and how it ended.

Written by process 0 when a run is accepted (its workdir locked), with `"status": "running"`, and rewritten
atomically when it ends: `completed`, `stopped` (a signal, train.stop_after_steps or early stopping: rerun to
resume where that applies), or `failed` with the exception's type and message. A resumed run rewrites it: the
file describes the latest invocation. Fields::

    command      the command line (the interpreter, then sys.argv)
    cwd          the working directory
    git          {"commit", "dirty"} of the library's checkout (null when it is not one)
    packages     versions of python, jax, jaxlib, flax, optax, orbax-checkpoint, numpy, tensorboardX,
                 tensorboard, datasets (null when missing)
    devices      {"platform", "kind", "count", "local_count"}
    hosts        {"process_count", "hostname"} (the hostname of process 0)
    start_time, end_time   ISO 8601 with the UTC offset; end_time null while running
    status, exit_code      "running"/"completed"/"stopped"/"failed"; the exit code scripts/train.py returns
    exception    {"type", "message"} of a failed run, else null
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Iterator

from research import atomic, errors

FILE = "run.json"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tensorboardX", "tensorboard", "datasets")
CHECKOUT = Path(__file__).resolve().parents[1]  # the library's own checkout, when it runs from one


def _now() -> str:
  return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _git(*args: str) -> str | None:
  try:
    done = subprocess.run(["git", *args], cwd=CHECKOUT, capture_output=True, text=True, timeout=20, check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  return done.stdout if done.returncode == 0 else None


def git_state() -> dict | None:
  """{"commit", "dirty"} of the checkout the library runs from; None when it is not the top of a git checkout
  (an installed copy inside another repository's tree does not count)."""
  top = _git("rev-parse", "--show-toplevel")
  if top is None or Path(top.strip()).resolve() != CHECKOUT:
    return None
  commit, status = _git("rev-parse", "HEAD"), _git("status", "--porcelain")
  return {"commit": commit.strip() if commit else None, "dirty": bool(status.strip()) if status is not None else None}


def package_versions() -> dict[str, str | None]:
  versions = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def describe() -> dict:
  """The record's fields that are known at the start."""
  import jax

  devices = jax.devices()
  return {"command": [sys.executable, *sys.argv], "cwd": os.getcwd(), "git": git_state(),
          "packages": package_versions(),
          "devices": {"platform": devices[0].platform, "kind": devices[0].device_kind, "count": len(devices),
                      "local_count": jax.local_device_count()},
          "hosts": {"process_count": jax.process_count(), "hostname": socket.gethostname()},
          "start_time": _now(), "end_time": None, "status": "running", "exit_code": None, "exception": None}


class Record:
  """The run.json of one invocation; the loop sets `status` to "stopped" when it stops before the end."""

  def __init__(self, workdir: Path, active: bool):
    self.path, self.active, self.status = Path(workdir) / FILE, active, "completed"
    self.fields = describe() if active else {}

  def write(self) -> None:
    if self.active:
      atomic.write_text(self.path, json.dumps(self.fields, indent=2) + "\n")

  def finish(self, error: BaseException | None) -> None:
    self.fields.update(end_time=_now(), status="failed" if error is not None else self.status,
                       exit_code=errors.exit_code(error),
                       exception=None if error is None else {"type": type(error).__name__, "message": str(error)})
    self.write()


@contextlib.contextmanager
def recording(workdir: str | os.PathLike) -> Iterator[Record]:
  """Writes WORKDIR/run.json now (status running) and again when the block ends, however it ends."""
  import jax

  record = Record(Path(workdir), active=jax.process_index() == 0)
  record.write()
  try:
    yield record
  except BaseException as e:
    record.finish(e)
    raise
  record.finish(None)
