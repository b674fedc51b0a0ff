"""The local target: N processes of one run on this host, each with its own devices.

Process 0's output streams through; the others' is kept in files and the tail
of a failed one is printed. When one process fails, the others are killed (they
could only wait for it) and its exit status is the launcher's. SIGTERM to the
launcher goes to every process: they stop together with a checkpoint.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from research.launch.common import Launch, device_env, shell

TRAIN_SCRIPT = str(Path(__file__).resolve().parents[2] / "scripts" / "train.py")
KILL_WAIT_S = 30


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def commands(launch: Launch, num_processes: int, gpus_per_process: int | None,
             port: int) -> list[tuple[dict[str, str], list[str]]]:
  """(environment additions, argv) of each process."""
  result = []
  for i in range(num_processes):
    env = device_env(launch.cpu_devices, os.environ.get("XLA_FLAGS", ""))
    if gpus_per_process:
      env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in range(i * gpus_per_process, (i + 1) * gpus_per_process))
    argv = launch.train_command(f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
                                f"--process_id={i}")
    argv[1] = TRAIN_SCRIPT
    result.append((env, argv))
  return result


def run(launch: Launch, num_processes: int, gpus_per_process: int | None) -> int:
  planned = commands(launch, num_processes, gpus_per_process, free_port())
  if launch.dry_run:
    for env, argv in planned:
      print(shell([f"{k}={v}" for k, v in env.items()] + argv) if env else shell(argv))
    return 0
  with tempfile.TemporaryDirectory(prefix="launch-") as logs:
    return _supervise(planned, Path(logs))


def _supervise(planned, logs: Path) -> int:
  procs, files = [], []
  for i, (env, argv) in enumerate(planned):
    log = None if i == 0 else open(logs / f"process_{i}.log", "w")  # noqa: SIM115  (closed below)
    files.append(log)
    procs.append(subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=log))
  forward = lambda signum, frame: [p.send_signal(signal.SIGTERM) for p in procs if p.poll() is None]
  previous = signal.signal(signal.SIGTERM, forward)
  try:
    while True:
      codes = [p.poll() for p in procs]
      failed = next((i for i, c in enumerate(codes) if c not in (None, 0)), None)
      if failed is not None:
        return _stop_after_failure(procs, failed, logs)
      if all(c == 0 for c in codes):
        return 0
      time.sleep(0.2)
  finally:
    signal.signal(signal.SIGTERM, previous)
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait(timeout=KILL_WAIT_S)
    for f in files:
      if f:
        f.close()


def _stop_after_failure(procs, failed: int, logs: Path) -> int:
  code = procs[failed].returncode
  for p in procs:
    if p.poll() is None:
      p.kill()  # a process whose peer is gone can only wait in a collective
  if failed:
    tail = (logs / f"process_{failed}.log").read_text(errors="replace").strip().splitlines()[-5:]
    print("\n".join(f"[process {failed}] {line}" for line in tail), file=sys.stderr)
  how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
  print(f"error: process {failed} of {len(procs)} {how}; stopped the others. Rerun the same command to resume from "
        f"the last checkpoint.", file=sys.stderr)
  return 128 - code if code < 0 else code
