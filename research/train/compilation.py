"""JAX's persistent compilation cache, on by default.

`config.compilation_cache` is "" (default: WORKDIR/cache/jax, so a resumed or
repeated run skips compiling; or the directory in $RESEARCH_COMPILATION_CACHE,
one cache for every run that does not name its own), a directory to share
between runs, or "off".
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

ENV = "RESEARCH_COMPILATION_CACHE"
MAX_BYTES = 4 << 30


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
    # A size bound turns on JAX's file lock around each read and write. Without it an entry is written in place,
    # and a run reading it meanwhile (parallel runs, a sweep, a multi-process run sharing the cache) can load
    # half an executable: XLA aborted the process on one (seen with two test workers). The bound also keeps a
    # shared cache from growing without end (least recently used entries go first).
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    compilation_cache.reset_cache()  # JAX opens its cache once; reopen it at the new path
  return path
