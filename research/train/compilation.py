"""JAX's persistent compilation cache, on by default.

`config.compilation_cache` is "" (default: WORKDIR/cache/jax, so a resumed or
repeated run skips compiling), a directory to share between runs, or "off".
"""

from __future__ import annotations

from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache


def enable(setting: str, workdir: Path) -> Path | None:
  """Points JAX's persistent cache at the configured directory; returns it (None when off)."""
  if setting == "off":
    return None
  path = Path(setting).expanduser() if setting else Path(workdir) / "cache" / "jax"
  path.mkdir(parents=True, exist_ok=True)
  if jax.config.jax_compilation_cache_dir != str(path):
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # small CPU programs count too
    compilation_cache.reset_cache()  # JAX opens its cache once; reopen it at the new path
  return path
