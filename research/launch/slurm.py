"""The slurm target: an sbatch script whose `srun` starts one process per task, submitted with sbatch.

One task per host (`--tasks_per_node 1`, each process drives all of its host's
GPUs) or one per GPU (`--tasks_per_node` = GPUs per host, `--gpus_per_task 1`).
The processes find each other from SLURM's environment (`--coordinator_address=auto`:
JAX reads SLURM_JOB_ID, SLURM_NTASKS, SLURM_PROCID and SLURM_STEP_NODELIST).
The script's environment is the submitting shell's (sbatch's default
`--export=ALL`), so the interpreter, PYTHONPATH and XLA_FLAGS carry over.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

from research.errors import ConfigError
from research.launch.common import Launch, device_env, shell
from research.launch.local import TRAIN_SCRIPT


@dataclasses.dataclass(frozen=True)
class Layout:
  job_name: str
  nodes: int
  tasks_per_node: int
  gpus_per_task: int | None = None
  partition: str | None = None
  time: str | None = None  # a SLURM time limit, e.g. 4:00:00


def script(launch: Launch, layout: Layout, directory: str) -> str:
  """The sbatch script: resources as #SBATCH lines, then one srun of the train command."""
  options = {"job-name": layout.job_name, "nodes": layout.nodes, "ntasks-per-node": layout.tasks_per_node,
             "gpus-per-task": layout.gpus_per_task, "partition": layout.partition, "time": layout.time,
             "chdir": directory, "output": f"{layout.job_name}-%j.out"}
  lines = ["#!/bin/bash"] + [f"#SBATCH --{k}={v}" for k, v in options.items() if v is not None]
  lines += [f"export {k}={shell([v])}" for k, v in device_env(launch.cpu_devices).items()]
  argv = launch.train_command("--coordinator_address=auto")
  argv[1] = TRAIN_SCRIPT
  lines.append(shell(["srun", *argv]))  # srun takes the task count and layout from the #SBATCH lines
  return "\n".join(lines) + "\n"


def run(launch: Launch, layout: Layout, wait: bool) -> int:
  """Writes JOB_NAME.sbatch here and submits it (with --wait: until it ends, then prints its log)."""
  if layout.nodes < 1 or layout.tasks_per_node < 1:
    raise ConfigError(f"--nodes={layout.nodes} --tasks_per_node={layout.tasks_per_node}: give at least 1 of each.")
  path = Path(f"{layout.job_name}.sbatch")
  text = script(launch, layout, str(Path.cwd()))
  submit = ["sbatch", "--parsable", *(["--wait"] if wait else []), str(path)]
  if launch.dry_run:
    print(f"# {path}\n{text}# submitted with:\n{shell(submit)}")
    return 0
  if shutil.which("sbatch") is None:
    raise ConfigError("sbatch is not on PATH: run this on a SLURM login node (or print the script with --dry_run).")
  path.write_text(text)
  done = subprocess.run(submit, capture_output=True, text=True, check=False)
  job = done.stdout.strip().split(";")[0]
  if not job:
    print(f"error: sbatch refused {path}: {done.stderr.strip() or 'no reason given'}")
    return done.returncode or 1
  log = Path(f"{layout.job_name}-{job}.out")
  if wait:
    print(log.read_text(errors="replace") if log.exists() else "", end="")
  print(f"job {job} {'ended with status ' + str(done.returncode) if wait else 'submitted'}; its log: {log}")
  return done.returncode
