"""The slurm target on a real one-node SLURM cluster (research/launch/slurm_cluster.py) started on this machine:
docs/clusters.md's demo, its three commands run as written (at smoke scale, with the test's own cluster directory).

Its 2 tasks find each other from SLURM's environment alone (`--coordinator_address=auto`) and train like one
process. Skips, saying why, only where slurm-wlm is not installed (.ci/run installs it).
"""

from __future__ import annotations

import getpass
import subprocess

import pytest

from research.launch import slurm_cluster
from tests import helpers
from tests import test_docs_commands as docs
from tests.test_multiprocess import assert_params_match

TIMEOUT_S = 600
DEMO = "/tmp/slurm-demo"  # the documented cluster directory; the test's own replaces it


def _as_here(command: str, directory) -> str:
  return docs.local_tools(docs.smoke_scale(command.replace(DEMO, str(directory))))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  """The directory of a one-node cluster started and stopped by the documented commands."""
  missing = slurm_cluster.missing_binaries()
  if missing:
    pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm")
  directory = tmp_path_factory.mktemp("slurm")
  docs.run(_as_here(docs.documented("research.launch.slurm_cluster start"), directory), helpers.ROOT)
  yield directory
  env = {**helpers.env_with_devices(1), "SLURM_CONF": str(directory / "slurm.conf")}
  # a job left by a failed test, in this test's own cluster (SLURM_CONF)
  subprocess.run(["scancel", f"--user={getpass.getuser()}"], env=env, timeout=60, check=False)
  docs.run(_as_here(docs.documented("research.launch.slurm_cluster stop"), directory), helpers.ROOT)
  assert not list(directory.glob("*.pid")), "the documented stop left a daemon running"


@pytest.mark.slow
def test_slurm_target_trains_two_tasks_like_one_process(cluster, tmp_path, tmp_path_factory):
  reference = helpers.smoke_run(tmp_path_factory, "mnist_mlp").workdir
  job = docs.documented("scripts/launch.py slurm --tasks_per_node 2")
  out = docs.run(_as_here(job, cluster), docs.make_scratch(tmp_path), timeout=TIMEOUT_S)
  assert "ended with status 0" in out and (tmp_path / "train.sbatch").exists()
  assert_params_match(tmp_path / "runs" / "mnist_mlp_slurm", reference)
