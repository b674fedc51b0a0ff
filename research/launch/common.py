"""What every target shares: the train command of one process, and its device settings."""

from __future__ import annotations

import dataclasses
import re
import shlex

from research.errors import ConfigError

# Flags the launcher sets itself: given among the train flags, they would contradict it.
LAUNCHER_FLAGS = ("--coordinator_address", "--num_processes", "--process_id")


@dataclasses.dataclass(frozen=True)
class Launch:
  train_args: tuple[str, ...]  # scripts/train.py's flags, the same in every process
  python: str  # the interpreter on the machines that run it
  cpu_devices: int | None  # simulated CPU devices per process (XLA_FLAGS), or None for the real accelerators
  dry_run: bool

  def train_command(self, *distributed_flags: str) -> list[str]:
    return [self.python, "scripts/train.py", *self.train_args, *distributed_flags]


def check_train_args(args: list[str]) -> tuple[str, ...]:
  """The train flags, refused when they lack --config/--workdir or set what the launcher sets."""
  for flag in LAUNCHER_FLAGS:
    if any(a == flag or a.startswith(flag + "=") for a in args):
      raise ConfigError(f"{flag} is set by the launcher for each process; leave it out of the train flags.")
  for flag in ("--config", "--workdir"):
    if not any(a == flag or a.startswith(flag + "=") for a in args):
      raise ConfigError(f"the train flags need {flag} (everything scripts/train.py takes is passed on to it).")
  return tuple(args)


def device_env(cpu_devices: int | None, xla_flags: str = "") -> dict[str, str]:
  """Environment variables giving a process `cpu_devices` simulated CPU devices (none: its accelerators)."""
  if cpu_devices is None:
    return {}
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", xla_flags).strip()
  return {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={cpu_devices}".strip()}


def shell(words: list[str]) -> str:
  return shlex.join(words)
