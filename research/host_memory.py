"""Keeps freed host memory mapped, so XLA:CPU's per-step buffers do not page-fault (set by the entry points).

XLA:CPU allocates each executable's temporary buffer (all of a training
step's activations: 171 MB for the benchmark Transformer, 70 MB for its CNN)
with malloc at every call and frees it at the end. glibc serves blocks that
large with a fresh mmap, and returns them with munmap, so every step
first-touches every page again: 47,000 minor page faults and a third of the
step's CPU time in the kernel for that Transformer. With one malloc arena,
no mmap and no trimming, the freed block stays in the heap and the next step
reuses it: no faults, and the Transformer and CNN steps run 1.5-1.7x faster
(docs/performance.md). The cost: the process keeps its peak
heap instead of returning it to the OS.

The scripts and `research.train.loop.train` call `apply()`; importing the
library does not. glibc tunables that act only from a process's start
(`TUNABLES`, below) are added by `environment()` for the processes the
library starts (the benchmarks), and `scripts/train.py` restarts itself with
them (`restart_with_tunables`). Only glibc (Linux) has these knobs; elsewhere
this does nothing.
`RESEARCH_MALLOC_DEFAULTS=0` in the environment turns it off. The
MALLOC_ARENA_MAX / MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_ environment
variables read by glibc at start-up do the same for any process.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from typing import Mapping

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_ARENA_MAX, 1),  # one arena: threads' blocks come from the main heap, which can grow without mmap
            (M_MMAP_MAX, 0),  # large blocks from the heap too, not from a fresh mmap each time
            (M_TRIM_THRESHOLD, 2**31 - 1))  # never hand the heap's free top back to the OS
# XLA allocates the buffer with posix_memalign(64). glibc before 2.38 serves that by a malloc 96 bytes larger and
# frees the unaligned ends (32-96 bytes) into the thread's tcache (or a fastbin), where they count as in use: the
# freed buffer cannot coalesce with them, is 96 bytes short of the next step's request, and the heap grows by a
# buffer unless other free memory adjoins it. Small blocks allocated between steps (a trainer's metrics, logs,
# batches) take those ends and hold them: the benchmark Transformer's trainer kept 4-5 buffers instead of 2-3.
# Without tcache and fastbins the ends are coalesced when freed. glibc reads these only at start-up.
TUNABLES = "glibc.malloc.tcache_count=0:glibc.malloc.mxfast=0"


def _settings_on(environ: Mapping[str, str]) -> bool:
  """glibc (the only libc with these knobs), and RESEARCH_MALLOC_DEFAULTS not 0."""
  return environ.get("RESEARCH_MALLOC_DEFAULTS", "1") != "0" and platform.libc_ver()[0] == "glibc"


def apply(environ: Mapping[str, str] = os.environ) -> bool:
  """Sets the malloc options; True if they were set. Call before JAX starts its threads."""
  if not _settings_on(environ):
    return False
  libc = ctypes.CDLL(None)  # the process's own symbols, glibc's among them (find_library would run ldconfig)
  return all(libc.mallopt(option, value) == 1 for option, value in SETTINGS)


def release_free_pages(environ: Mapping[str, str] = os.environ) -> bool:
  """Hands the free pages inside the heap back to the OS, keeping its top; True if it ran (glibc, settings on).

  Compiling leaves holes of freed scratch memory below the step's buffers that later steps never reuse; with
  trimming off (`SETTINGS`) they stay resident. The trainer calls this once, after its first step (its peak went
  from 1.11-1.13x of the hand-written loop's to 0.95x: docs/performance.md). The huge pad keeps the heap's top,
  where the step's buffers live, so they are not faulted in again."""
  if not _settings_on(environ):
    return False
  ctypes.CDLL(None).malloc_trim(ctypes.c_size_t(1 << 40))
  return True


def _needs_tunables(environ: Mapping[str, str]) -> bool:
  """Whether a process started with `environ` lacks `TUNABLES` and needs them (glibc before 2.38, settings on)."""
  return (_settings_on(environ) and tuple(int(v) for v in platform.libc_ver()[1].split(".")[:2]) < (2, 38)
          and TUNABLES not in environ.get("GLIBC_TUNABLES", ""))


def environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
  """`environ` for a child process: with `TUNABLES` added to GLIBC_TUNABLES where `_needs_tunables`."""
  env = dict(environ)
  if _needs_tunables(env):
    env["GLIBC_TUNABLES"] = ":".join(filter(None, (env.get("GLIBC_TUNABLES"), TUNABLES)))
  return env


def restart_with_tunables() -> None:
  """Starts this script again in place (the same process id, arguments and open files) with `TUNABLES` in its
  environment, where they are needed and missing: glibc reads them only at start-up. scripts/train.py calls it
  before anything else; a process that has them returns at once."""
  if _needs_tunables(os.environ):
    os.execve(sys.executable, sys.orig_argv, environment())
