"""One writer per workdir: an exclusive `flock` on WORKDIR/.lock, held for the whole run.

The kernel releases the lock when the process dies, however it dies (SIGKILL
included), so a crashed run never leaves a stale lock behind. The file names the
holder (pid, host, start time) for the message a second run prints. Readers
(`evaluate`, `export`) take no lock: they never change a workdir.

`flock` is local to one machine on some network filesystems (older NFS): two
hosts writing one shared workdir are not stopped there.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from research.errors import ConfigError

LOCK_FILE = ".lock"


class WorkdirLock:
  """A context manager holding WORKDIR/.lock; entering it raises ConfigError naming the holder if another process
  holds it."""

  def __init__(self, workdir: str | Path):
    self.path = Path(workdir) / LOCK_FILE
    self._fd: int | None = None

  def __enter__(self) -> "WorkdirLock":
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise ConfigError(f"{self.path.parent} is in use by another run ({self.holder()}); wait for it to finish, "
                        f"stop it, or choose another --workdir.") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}).encode())
    self._fd = fd
    return self

  def holder(self) -> str:
    try:
      info = json.loads(self.path.read_text())
      return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError):
      return "holder unknown: it is starting up"

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      os.close(self._fd)  # closing the descriptor releases the lock
      self._fd = None
