"""scripts/launch.py's targets, checked without a cluster: what each prints with --dry_run, and bad input.

The Kubernetes manifests also go through kubectl's own typed decoding offline (`kubectl set ... --local`, which
needs no server): a misspelled field or a wrong type would not survive it.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from research.distributed import initialize
from research.errors import ConfigError
from research.launch import cli, kubernetes, local, slurm, tpu_vm
from research.launch.common import Launch
from tests import helpers

TRAIN = ["--config", "configs/mnist_mlp.py", "--workdir", "runs/x"]


def _dry_run(capsys, target: str, *flags: str) -> str:
  assert cli.main([target, *flags, *TRAIN, "--dry_run"]) == 0
  return capsys.readouterr().out


def test_local_dry_run_prints_one_command_per_process_with_its_devices(capsys):
  lines = _dry_run(capsys, "local", "--num_processes", "2", "--cpu_devices_per_process", "2").splitlines()
  assert len(lines) == 2
  ports = set()
  for i, line in enumerate(lines):
    words = shlex.split(line)
    assert words[0] == "JAX_PLATFORMS=cpu" and words[1].startswith("XLA_FLAGS=")  # other XLA flags kept
    assert words[1].split()[-1] == "--xla_force_host_platform_device_count=2" and words[1].count("device_count") == 1
    assert words[2:4] == [sys.executable, local.TRAIN_SCRIPT] and words[4:8] == TRAIN
    assert words[9:] == ["--num_processes=2", f"--process_id={i}"]
    ports.add(words[8])
  assert len(ports) == 1 and ports.pop().startswith("--coordinator_address=127.0.0.1:")


def test_slurm_script_runs_srun_with_cluster_detection(capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  out = _dry_run(capsys, "slurm", "--nodes", "2", "--tasks_per_node", "4", "--gpus_per_task", "1", "--partition",
                 "gpu", "--time", "1:00:00", "--job_name", "mlp")
  assert out == f"""# mlp.sbatch
#!/bin/bash
#SBATCH --job-name=mlp
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-task=1
#SBATCH --partition=gpu
#SBATCH --time=1:00:00
#SBATCH --chdir={tmp_path}
#SBATCH --output=mlp-%j.out
srun {sys.executable} {local.TRAIN_SCRIPT} {' '.join(TRAIN)} --coordinator_address=auto
# submitted with:
sbatch --parsable mlp.sbatch
"""
  assert not (tmp_path / "mlp.sbatch").exists()  # a dry run writes nothing


def _kubernetes_documents(capsys) -> list[dict]:
  out = _dry_run(capsys, "kubernetes", "--name", "mlp", "--image", "registry.example/research:1", "--num_processes",
                 "4", "--port", "2222", "--gpus_per_process", "8", "--volume_claim", "runs")
  assert out.endswith("# applied with:\n# kubectl apply -f -\n")
  return list(yaml.safe_load_all(out))


def test_kubernetes_manifests_hold_the_coordinator_the_index_and_the_port(capsys):
  service, job = _kubernetes_documents(capsys)
  assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
  assert service["spec"]["ports"][0]["port"] == 2222
  assert job["kind"] == "Job" and job["spec"]["completionMode"] == "Indexed"
  assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4
  pod = job["spec"]["template"]
  assert service["spec"]["selector"] == pod["metadata"]["labels"]  # the Service finds the Job's pods
  assert pod["spec"]["subdomain"] == "mlp"  # so pod 0 answers at mlp-0.mlp
  container = pod["spec"]["containers"][0]
  assert container["command"] == ["python", "scripts/train.py", *TRAIN, "--coordinator_address=mlp-0.mlp:2222",
                                  "--num_processes=4", "--process_id=$(JOB_COMPLETION_INDEX)"]
  assert container["env"][0] == {"name": "JOB_COMPLETION_INDEX",
                                 "valueFrom": {"fieldRef": {"fieldPath": kubernetes.INDEX_ANNOTATION}}}
  assert container["ports"] == [{"containerPort": 2222}]
  assert container["resources"] == {"limits": {"nvidia.com/gpu": "8"}}
  assert pod["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "runs"}


def _contained(ours, theirs, path="") -> list[str]:
  """Paths of `ours` that `theirs` lacks or holds differently (kubectl adds defaults, never drops a known field)."""
  if isinstance(ours, dict):
    return [p for k, v in ours.items()
            for p in ([f"{path}.{k}"] if k not in theirs else _contained(v, theirs[k], f"{path}.{k}"))]
  if isinstance(ours, list):
    if len(ours) != len(theirs):
      return [path]
    return [p for i, (a, b) in enumerate(zip(ours, theirs)) for p in _contained(a, b, f"{path}[{i}]")]
  return [] if ours == theirs else [f"{path}: {ours!r} != {theirs!r}"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubernetes_manifests_survive_kubectl_typed_decoding_offline(capsys):
  service, job = _kubernetes_documents(capsys)
  # `set ... --local` decodes into the API types with no server and prints the changed object back.
  checks = [(service, ["set", "selector", "research.launch/job=mlp"]), (job, ["set", "image", "train=probe:0"])]
  for document, command in checks:
    done = subprocess.run(["kubectl", *command, "--local", "-f", "-", "-o", "yaml"], input=yaml.safe_dump(document),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout, done.stderr
    if document["kind"] == "Job":
      document["spec"]["template"]["spec"]["containers"][0]["image"] = "probe:0"  # kubectl's change
    assert _contained(document, yaml.safe_load(done.stdout)) == [], document["kind"]


def test_tpu_vm_installs_then_trains_on_every_worker(capsys):
  out = _dry_run(capsys, "tpu-vm", "--tpu", "pod", "--zone", "us-central2-b", "--project", "lab", "--repo_url",
                 "https://example.com/research.git", "--ref", "v1")
  ssh = "gcloud compute tpus tpu-vm ssh pod --zone=us-central2-b --project=lab --worker=all"
  install = ("(test -d research || git clone https://example.com/research.git research) && cd research && git fetch "
             "-q origin && git checkout -q v1 && python3 -m venv .venv && .venv/bin/pip install -q -e \".[tpu]\"")
  train = f"cd research && .venv/bin/python scripts/train.py {' '.join(TRAIN)} --coordinator_address=auto"
  assert out.splitlines() == [f"{ssh} {shlex.quote('--command=' + install)}", f"{ssh} {shlex.quote('--command=' + train)}"]
  no_install = tpu_vm.commands(Launch(tuple(TRAIN), "python", None, True),
                               tpu_vm.Layout("pod", "z", None, "u", install=False))
  assert len(no_install) == 1 and no_install[0][-1] == "--command=" + train


@pytest.mark.parametrize("argv, words", [
    (["local", *TRAIN], ["--num_processes", "required"]),
    (["local", "--num_processes", "2", "--workdir", "w"], ["--config"]),
    (["local", "--num_processes", "0", *TRAIN], ["--num_processes=0"]),
    (["local", "--num_processes", "2", *TRAIN, "--process_id=1"], ["--process_id", "set by the launcher"]),
    (["mars", *TRAIN], ["mars", "local", "slurm", "kubernetes", "tpu-vm"]),
    (["kubernetes", "--name", "x", *TRAIN], ["--image", "--num_processes"]),
])
def test_bad_launch_flags_are_one_line_errors(capsys, argv, words):
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1, err
  for word in words:
    assert word in err


def test_slurm_without_sbatch_says_where_to_run(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("PATH", str(tmp_path))
  with pytest.raises(ConfigError, match="sbatch is not on PATH"):
    slurm.run(Launch(tuple(TRAIN), "python", None, False), slurm.Layout("j", 1, 1), wait=True)


@pytest.mark.parametrize("args, words", [
    (("auto", 2, None), ["auto", "leave out --num_processes"]),
    (("localhost", 2, 0), ["HOST:PORT"]),
    (("h:1", 2, 0, 0), ["--init_timeout_s=0"]),
])
def test_bad_distributed_flags_name_the_flag(args, words):
  with pytest.raises(ConfigError) as error:
    initialize(*args[:3], init_timeout_s=args[3] if len(args) > 3 else 300)
  for word in words:
    assert word in str(error.value)


def test_launch_help_lists_the_targets_without_importing_jax():
  code = "import runpy, sys; sys.argv = ['launch.py', '--help']\ntry: runpy.run_path(" \
         f"{str(helpers.ROOT / 'scripts/launch.py')!r}, run_name='__main__')\nexcept SystemExit: pass\n" \
         "print('jax imported:', 'jax' in sys.modules)"
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
  assert done.stdout.rstrip().endswith("jax imported: False"), done.stderr[-2000:]
  for target in ("local", "slurm", "kubernetes", "tpu-vm"):
    assert target in done.stdout
