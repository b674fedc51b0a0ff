"""Small timing helpers shared by the benchmark sections."""

from __future__ import annotations

import platform
import resource
import statistics
import time
from typing import Callable

import jax


def median_time(fn: Callable[[], object], repeats: int) -> float:
  """Median wall time of `fn()` over `repeats` calls; `fn` must block until its work is done."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def peak_rss_mb() -> float:
  """Peak resident memory of this process so far (Linux reports kB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> str:
  import os

  cpu = "unknown CPU"
  try:
    for line in open("/proc/cpuinfo"):
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return (f"{cpu}, {os.cpu_count()} cores visible, Python {platform.python_version()}, "
          f"jax {jax.__version__} on {jax.devices()[0].platform} x{jax.device_count()}")


def table(header: list[str], rows: list[list[object]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)
