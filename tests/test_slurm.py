"""The slurm target on a real one-node SLURM cluster (research/launch/slurm_cluster.py) started on this machine.

Its 2 tasks find each other from SLURM's environment alone (`--coordinator_address=auto`) and train like one
process. Skips, saying why, only where slurm-wlm is not installed (.ci/run installs it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from research.launch import slurm_cluster
from tests import helpers
from tests.test_multiprocess import assert_params_match

TIMEOUT_S = 600


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
  """The SLURM_CONF environment of a running one-node cluster, stopped after the module."""
  missing = slurm_cluster.missing_binaries()
  if missing:
    pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm")
  directory = tmp_path_factory.mktemp("slurm")
  slurm_cluster.start(directory)
  yield slurm_cluster.environment(directory)
  slurm_cluster.stop(directory)


@pytest.mark.slow
def test_slurm_target_trains_two_tasks_like_one_process(cluster, tmp_path, tmp_path_factory):
  reference = helpers.smoke_run(tmp_path_factory, "mnist_mlp").workdir
  command = [sys.executable, str(helpers.ROOT / "scripts/launch.py"), "slurm", "--tasks_per_node", "2",
             "--cpu_devices_per_process", "2", "--wait", "--config", str(helpers.ROOT / "configs/mnist_mlp.py:smoke"),
             "--workdir", "run"]
  env = {**helpers.env_with_devices(1), "SLURM_CONF": cluster["SLURM_CONF"]}
  proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True)
  try:
    out, err = proc.communicate(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    subprocess.run(["scancel", "--user=root"], env=env, timeout=60, check=False)  # the job's tasks are slurmd's
    out, err = proc.communicate()
    raise AssertionError(f"the SLURM job did not end in {TIMEOUT_S}s:\n{out[-3000:]}") from None
  assert proc.returncode == 0, out[-3000:] + err[-2000:]
  assert "ended with status 0" in out and (tmp_path / "train.sbatch").exists()
  assert_params_match(tmp_path / "run", reference)
