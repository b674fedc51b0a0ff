"""A one-node SLURM cluster on this machine, to try the slurm target (and test it) without a real cluster.

    python -m research.launch.slurm_cluster start /tmp/slurm   # then SLURM_CONF=/tmp/slurm/slurm.conf sbatch ...
    python -m research.launch.slurm_cluster stop /tmp/slurm

Needs Debian's `slurm-wlm` (slurmctld, slurmd, sbatch, srun) and root: the daemons
run as root with no authentication (auth/none), so never on a shared machine.
Everything they write lives in the given directory; ports are chosen free, so
two such clusters can run side by side.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd")
BINARIES = (*DAEMONS, "sinfo", "sbatch", "srun")
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 15


def missing_binaries() -> list[str]:
  return [b for b in BINARIES if shutil.which(b) is None]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("", 0))
    return s.getsockname()[1]


def config_text(directory: Path) -> str:
  host = socket.gethostname().split(".")[0]
  d = directory.absolute()
  return "\n".join([
      "ClusterName=research", f"SlurmctldHost={host}", f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
      "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/none", "CredType=cred/none", "MpiDefault=none",
      "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
      "ReturnToService=2", "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
      f"StateSaveLocation={d}/state", f"SlurmdSpoolDir={d}/spool", f"SlurmctldPidFile={d}/slurmctld.pid",
      f"SlurmdPidFile={d}/slurmd.pid", f"SlurmctldLogFile={d}/slurmctld.log", f"SlurmdLogFile={d}/slurmd.log",
      f"NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN",
      f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES", ""])


def environment(directory: Path) -> dict[str, str]:
  """The environment in which SLURM's commands talk to this cluster."""
  return {**os.environ, "SLURM_CONF": str(Path(directory).absolute() / "slurm.conf")}


def start(directory: Path) -> None:
  """Writes the config, starts both daemons and waits until the node is idle; raises RuntimeError if it is not."""
  directory = Path(directory)
  if missing := missing_binaries():
    raise RuntimeError(f"{', '.join(missing)} not found: install Debian's slurm-wlm (apt-get install slurm-wlm).")
  stop(directory)  # a cluster started earlier in this directory
  for sub in ("state", "spool"):
    (directory / sub).mkdir(parents=True, exist_ok=True)
  conf = directory / "slurm.conf"
  conf.write_text(config_text(directory))
  env = environment(directory)
  for daemon in DAEMONS:  # each daemonizes once it is up
    subprocess.run([daemon, "-c", "-f", str(conf)], env=env, check=True, timeout=START_TIMEOUT_S,
                   capture_output=True)
  deadline, state = time.time() + START_TIMEOUT_S, ""
  while time.time() < deadline:
    state = subprocess.run(["sinfo", "-h", "-o", "%t"], check=False, env=env, capture_output=True, text=True,
                           timeout=START_TIMEOUT_S).stdout.strip()
    if state == "idle":
      return
    time.sleep(0.5)
  stop(directory)
  raise RuntimeError(f"the SLURM node is {state or 'not answering'} after {START_TIMEOUT_S} s; see {directory}/*.log")


def stop(directory: Path) -> None:
  """Stops both daemons by their pid files (SIGTERM, then SIGKILL after STOP_TIMEOUT_S)."""
  for daemon in DAEMONS:
    pid_file = Path(directory) / f"{daemon}.pid"
    if not pid_file.exists():
      continue
    pid = int(pid_file.read_text().split()[0])
    for sig in (signal.SIGTERM, signal.SIGKILL):
      try:
        os.kill(pid, sig)
      except ProcessLookupError:
        break
      deadline = time.time() + STOP_TIMEOUT_S
      while time.time() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.2)
    pid_file.unlink(missing_ok=True)


if __name__ == "__main__":
  if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
    sys.exit("usage: python -m research.launch.slurm_cluster start|stop DIRECTORY")
  try:
    (start if sys.argv[1] == "start" else stop)(Path(sys.argv[2]))
  except (RuntimeError, subprocess.SubprocessError) as e:
    sys.exit(f"error: {e}")
  if sys.argv[1] == "start":
    print(f"a one-node SLURM cluster is up; its commands need SLURM_CONF={Path(sys.argv[2]).absolute()}/slurm.conf")
