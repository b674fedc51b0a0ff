"""JAX's persistent compilation cache, on by default, in a store that many runs can share.

`config.compilation_cache` is "" (default: WORKDIR/cache/jax, so a resumed or
repeated run skips compiling; or the directory in $RESEARCH_COMPILATION_CACHE,
one cache for every run that does not name its own), a directory to share
between runs, or "off". Processes that read a run (evaluate, explain, export:
`research.train.experiment.restore`) use its cache too (`enable_reading`).

The store is `FileCache`, not JAX's own bounded cache. JAX's takes a file lock
around every read and write and, at every write, reads the size and access
time of every entry to decide what to evict: 163 ms per compiled program in a
cache of 2,946 entries (docs/performance.md), and runs sharing the cache wait
on each other's lock. JAX's unbounded one writes entries in place, so a run
reading one meanwhile (parallel runs, a sweep, a multi-process run) can load
half an executable: XLA aborted a process on one. `FileCache` writes each
entry under a temporary name and renames it into place, so a reader sees a
whole entry or none without a lock, and it keeps its size below `MAX_BYTES`
from a running total, scanning the directory only when that total says it
must evict (least recently used first).
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

ENV = "RESEARCH_COMPILATION_CACHE"
MAX_BYTES = 4 << 30
SUFFIX = "-cache"  # JAX's own entry suffix: a cache written by JAX's store stays readable


class FileCache:
  """A directory of compiled programs (JAX's CacheInterface: get, put): atomic writes, no lock, least recently
  used entries evicted once the directory passes `max_bytes` (to 90% of it)."""

  def __init__(self, path: Path, max_bytes: int = MAX_BYTES):
    self._path, self.max_bytes = Path(path), max_bytes
    self._lock = threading.Lock()  # the running total, between this process's compiling threads
    self._total = sum(size for _, size, _ in self._entries())

  def _entries(self) -> list[tuple[float, int, Path]]:
    """(last use, bytes, path) of every file in the directory: entries, and temporaries of interrupted writes."""
    found = []
    for entry in os.scandir(self._path):
      try:
        stat = entry.stat()
      except FileNotFoundError:  # evicted by another run meanwhile
        continue
      if entry.is_file() and not entry.name.startswith("."):
        found.append((stat.st_mtime, stat.st_size, Path(entry.path)))
    return found

  def get(self, key: str) -> bytes | None:
    path = self._path / f"{key}{SUFFIX}"
    try:
      value = path.read_bytes()
      os.utime(path)  # its last use, for eviction
    except FileNotFoundError:
      return None
    return value

  def put(self, key: str, value: bytes) -> None:
    path = self._path / f"{key}{SUFFIX}"
    if path.exists() or len(value) > self.max_bytes:
      return
    handle, temporary = tempfile.mkstemp(dir=self._path, prefix=f"{key}.", suffix=".tmp")
    with os.fdopen(handle, "wb") as file:
      file.write(value)
    os.replace(temporary, path)  # atomic: readers see the whole entry or none
    with self._lock:
      self._total += len(value)
      if self._total > self.max_bytes:
        self._evict()

  def _evict(self) -> None:
    entries = sorted(self._entries())
    self._total = sum(size for _, size, _ in entries)
    for _, size, path in entries:  # oldest use first
      if self._total <= 0.9 * self.max_bytes:
        break
      path.unlink(missing_ok=True)
      self._total -= size


def _install(path: Path) -> None:
  """Makes `FileCache(path)` JAX's store. JAX has no public hook for it: where its private module has changed,
  JAX's own bounded cache (file lock, scan at every write) is used instead."""
  from jax._src import compilation_cache as jax_cache

  compilation_cache.reset_cache()  # JAX opens its cache once; reopen it at the new path
  if all(hasattr(jax_cache, name) for name in ("_cache", "_cache_initialized", "_cache_initialized_mutex")):
    with jax_cache._cache_initialized_mutex:
      jax_cache._cache, jax_cache._cache_initialized = FileCache(path), True
  else:
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)


def enable_reading(setting: str, workdir: Path) -> Path | None:
  """`enable` for a process that reads a run (evaluate, explain, export): the run's cache, whose programs it
  shares (an eval step training compiled), or none where the cache cannot be created (a read-only workdir)."""
  try:
    return enable(setting, workdir)
  except OSError:
    return None


def enable(setting: str, workdir: Path) -> Path | None:
  """Points JAX's persistent cache at the configured directory; returns it (None when off)."""
  if setting == "off":
    return None
  default = os.environ.get(ENV) or Path(workdir) / "cache" / "jax"
  path = Path(setting or default).expanduser()
  path.mkdir(parents=True, exist_ok=True)
  if jax.config.jax_compilation_cache_dir != str(path):
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # small CPU programs count too
    _install(path)
  return path
