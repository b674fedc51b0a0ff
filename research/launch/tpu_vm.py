"""The tpu-vm target: the same command on every worker of a Cloud TPU VM slice, over `gcloud ... ssh --worker=all`.

First an install step (clone or update the repository, a virtual environment
with the `tpu` extra), then the train command with `--coordinator_address=auto`:
JAX finds the slice's workers itself. The workdir should be on storage every
worker shares (e.g. a Filestore mount).
"""

from __future__ import annotations

import dataclasses
import subprocess

from research.launch.common import Launch, shell

REPO_DIR = "research"


@dataclasses.dataclass(frozen=True)
class Layout:
  tpu: str
  zone: str
  project: str | None
  repo_url: str
  ref: str = "main"
  install: bool = True


def ssh(layout: Layout, command: str) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", layout.tpu, f"--zone={layout.zone}",
          *([f"--project={layout.project}"] if layout.project else []), "--worker=all", f"--command={command}"]


def commands(launch: Launch, layout: Layout) -> list[list[str]]:
  """[install step (unless turned off), train step], each run on every worker."""
  repo = shell([REPO_DIR])
  install = (f"(test -d {repo} || git clone {shell([layout.repo_url])} {repo}) && cd {repo} && git fetch -q origin "
             f"&& git checkout -q {shell([layout.ref])} && python3 -m venv .venv && .venv/bin/pip install -q -e \".[tpu]\"")
  train = f"cd {repo} && " + shell([".venv/bin/python", *launch.train_command("--coordinator_address=auto")[1:]])
  return ([ssh(layout, install)] if layout.install else []) + [ssh(layout, train)]


def run(launch: Launch, layout: Layout) -> int:
  for command in commands(launch, layout):
    if launch.dry_run:
      print(shell(command))
      continue
    code = subprocess.run(command, check=False).returncode
    if code:
      return code
  return 0
