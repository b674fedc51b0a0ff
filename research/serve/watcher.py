"""Watching a model repository: every `poll_s` seconds, new, changed and removed `DIR/<name>/<version>/` exports.

Each poll runs Repository.poll in a worker thread, so verifying and warming up a new version never holds up the
event loop that answers requests. A version's files are compared by their names, sizes and modification times:
a directory listing is cheap enough for every poll; the full sha256 check runs when a version loads. Only
directories named by a whole number are versions: copy a new one in under another name (`.3.tmp`) and rename
it, so that a poll never sees it half-copied.
"""

from __future__ import annotations

import asyncio
from pathlib import Path


def model_dirs(root: Path) -> list[Path]:
  return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def versions(model_dir: Path) -> dict[int, Path]:
  """{version: directory} of the whole-number subdirectories; none if `model_dir` is gone."""
  try:
    return {int(p.name): p for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir()}
  except OSError:
    return {}


def fingerprint(directory: Path) -> tuple:
  """(name, bytes, mtime) of every file below `directory`: changes when a file is added, removed or rewritten."""
  found = []
  for path in directory.rglob("*"):
    try:
      stat = path.stat()
    except OSError:  # removed while listed
      continue
    if path.is_file():
      found.append((path.relative_to(directory).as_posix(), stat.st_size, stat.st_mtime_ns))
  return tuple(sorted(found))


class Watcher:
  """`start()` (on the running event loop) polls `repo` every `poll_s` seconds until the loop stops."""

  def __init__(self, repo, poll_s: float):
    self.repo, self.poll_s, self.task = repo, poll_s, None

  def start(self) -> None:
    self.task = asyncio.get_running_loop().create_task(self._run())

  async def _run(self) -> None:
    while True:
      await asyncio.sleep(self.poll_s)
      try:
        await asyncio.to_thread(self.repo.poll)
      except Exception as e:  # noqa: BLE001  (e.g. the directory is gone for a moment: the next poll tries again)
        self.repo.say(f"warning: the model repository could not be read: {e}")
