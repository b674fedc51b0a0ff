"""Memory per chip of the accelerators `scripts/train.py --compile_only --accelerator NAME` checks a run against.

GiB, as the vendors name it. GPU runtimes keep some for themselves: JAX on a GPU preallocates 75% of it unless
XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise. (No JAX here: `--help` lists the names without starting it.)
"""

from __future__ import annotations

from research.errors import ConfigError

GIB = 2**30
MEMORY_GIB = {"h100": 80, "h200": 141, "a100-40": 40, "a100-80": 80, "v4": 32, "v5e": 16, "v5p": 95}


def memory_bytes(name: str) -> int:
  """The memory of one chip of accelerator `name` (a key of MEMORY_GIB), in bytes; ConfigError for another name."""
  if name not in MEMORY_GIB:
    raise ConfigError(f"--accelerator {name!r} is not known; choose one of {', '.join(MEMORY_GIB)}.")
  return MEMORY_GIB[name] * GIB
