"""The kubernetes target: an Indexed Job of N pods and a headless Service, applied with kubectl.

Pod i of the Indexed Job is `NAME-i` and, with the Service as its subdomain,
answers at `NAME-i.NAME`; so every process is given the explicit coordinator
`NAME-0.NAME:PORT`, `--num_processes N` and `--process_id` from the pod's
completion index (JAX's own Kubernetes detection would need jax[k8s] and RBAC
to read pods). The image must hold this repository at `--repo_dir` with its
dependencies installed; the workdir should be on a volume every pod mounts.
"""

from __future__ import annotations

import dataclasses
import subprocess

import yaml

from research.launch.common import Launch, device_env, shell

INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
LABEL = "research.launch/job"


@dataclasses.dataclass(frozen=True)
class Layout:
  name: str
  image: str
  num_processes: int
  port: int = 12355
  gpus_per_process: int | None = None
  repo_dir: str = "/app"
  volume_claim: str | None = None  # a PersistentVolumeClaim mounted at mount_path in every pod
  mount_path: str = "/runs"


def manifests(launch: Launch, layout: Layout) -> list[dict]:
  """[headless Service, Indexed Job]."""
  service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": layout.name},
             "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {LABEL: layout.name},
                      "ports": [{"name": "coordinator", "port": layout.port}]}}
  env = [{"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {"fieldPath": INDEX_ANNOTATION}}}]
  env += [{"name": k, "value": v} for k, v in device_env(launch.cpu_devices).items()]
  container = {"name": "train", "image": layout.image, "workingDir": layout.repo_dir,
               "command": launch.train_command(f"--coordinator_address={layout.name}-0.{layout.name}:{layout.port}",
                                               f"--num_processes={layout.num_processes}",
                                               "--process_id=$(JOB_COMPLETION_INDEX)"),
               "env": env, "ports": [{"containerPort": layout.port}]}
  pod = {"subdomain": layout.name, "restartPolicy": "Never", "containers": [container]}
  if layout.gpus_per_process:
    container["resources"] = {"limits": {"nvidia.com/gpu": str(layout.gpus_per_process)}}  # a quantity
  if layout.volume_claim:
    container["volumeMounts"] = [{"name": "runs", "mountPath": layout.mount_path}]
    pod["volumes"] = [{"name": "runs", "persistentVolumeClaim": {"claimName": layout.volume_claim}}]
  job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": layout.name},
         "spec": {"completionMode": "Indexed", "completions": layout.num_processes,
                  "parallelism": layout.num_processes, "backoffLimit": 0,  # a lost process fails the run: rerun it
                  "template": {"metadata": {"labels": {LABEL: layout.name}}, "spec": pod}}}
  return [service, job]


def to_yaml(documents: list[dict]) -> str:
  return yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True)


def run(launch: Launch, layout: Layout, namespace: str | None) -> int:
  apply = ["kubectl", "apply", *(["--namespace", namespace] if namespace else []), "-f", "-"]
  text = to_yaml(manifests(launch, layout))
  if launch.dry_run:
    print(f"{text}# applied with:\n# {shell(apply)}")
    return 0
  return subprocess.run(apply, input=text, text=True, check=False).returncode
