"""scripts/launch.py: parse the target and its flags; every other flag goes to scripts/train.py in each process."""

from __future__ import annotations

import sys

from research.cli import Parser, script_parser
from research.errors import ConfigError
from research.launch import common

EPILOG = """Every flag a target does not know is passed to scripts/train.py in each process (--config and --workdir
are needed). --dry_run prints what would be run or submitted, and runs nothing. docs/clusters.md shows each target.

  python scripts/launch.py local --num_processes 2 --cpu_devices_per_process 2 \\
      --config configs/mnist_mlp.py --workdir runs/mnist_mlp_2proc"""


def parser() -> Parser:
  p = script_parser("launch.py", "Launch one multi-process training run on this host, SLURM, Kubernetes or Cloud "
                    "TPU VMs.", EPILOG)
  targets = p.add_subparsers(dest="target", required=True, metavar="TARGET", parser_class=Parser)
  add = lambda name, text: targets.add_parser(name, help=text, description=text, allow_abbrev=False)
  local = add("local", "N processes on this host, each with its own devices")
  local.add_argument("--num_processes", type=int, required=True, metavar="N", help="how many processes")
  local.add_argument("--gpus_per_process", type=int, default=None, metavar="G",
                     help="give process i the GPUs i*G to i*G+G-1 (CUDA_VISIBLE_DEVICES)")
  slurm = add("slurm", "write an sbatch script (srun, one task per host or per GPU) and submit it")
  slurm.add_argument("--nodes", type=int, default=1, metavar="N", help="hosts (default 1)")
  slurm.add_argument("--tasks_per_node", type=int, default=1, metavar="T",
                     help="processes per host: 1 (default) drives all its GPUs, or one per GPU")
  slurm.add_argument("--gpus_per_task", type=int, default=None, metavar="G", help="GPUs per process")
  slurm.add_argument("--partition", default=None, help="the SLURM partition (default: the cluster's)")
  slurm.add_argument("--time", default=None, metavar="LIMIT", help="the job's time limit, e.g. 4:00:00")
  slurm.add_argument("--job_name", default="train", metavar="NAME",
                     help="the job's name; the script is NAME.sbatch, its log NAME-JOBID.out (default train)")
  slurm.add_argument("--wait", action="store_true", help="wait for the job to end, print its log, exit with its status")
  k8s = add("kubernetes", "an Indexed Job plus a headless Service, applied with kubectl")
  k8s.add_argument("--name", required=True, help="the Job's and the Service's name (pods are NAME-0, NAME-1, ...)")
  k8s.add_argument("--image", required=True, help="a container image holding this repository and its dependencies")
  k8s.add_argument("--num_processes", type=int, required=True, metavar="N", help="how many pods (one process each)")
  k8s.add_argument("--port", type=int, default=12355, help="the coordinator's port on pod 0 (default 12355)")
  k8s.add_argument("--gpus_per_process", type=int, default=None, metavar="G", help="nvidia.com/gpu per pod")
  k8s.add_argument("--repo_dir", default="/app", metavar="DIR", help="the repository's path in the image (/app)")
  k8s.add_argument("--volume_claim", default=None, metavar="PVC",
                   help="a PersistentVolumeClaim every pod mounts at --mount_path, for the workdir")
  k8s.add_argument("--mount_path", default="/runs", metavar="DIR", help="where the volume is mounted (/runs)")
  k8s.add_argument("--namespace", default=None, help="kubectl's namespace (default: the context's)")
  tpu = add("tpu-vm", "the install step, then the train command, on every worker of a Cloud TPU VM")
  tpu.add_argument("--tpu", required=True, metavar="NAME", help="the TPU VM's name")
  tpu.add_argument("--zone", required=True, help="its zone, e.g. us-central2-b")
  tpu.add_argument("--project", default=None, help="the Google Cloud project (default: gcloud's)")
  tpu.add_argument("--repo_url", required=True, metavar="URL", help="where the workers clone this repository from")
  tpu.add_argument("--ref", default="main", help="the branch, tag or commit to check out (default main)")
  tpu.add_argument("--skip_install", action="store_true", help="the workers are set up already: only train")
  for target in (local, slurm, k8s, tpu):
    target.add_argument("--cpu_devices_per_process", type=int, default=None, metavar="K",
                        help="run on K simulated CPU devices per process (for trying a launch without accelerators)")
    target.add_argument("--dry_run", action="store_true", help="print what would be run or submitted; run nothing")
  return p


def launch(argv: list[str]) -> int:
  args, train_args = parser().parse_known_args(argv)
  for flag in ("num_processes", "cpu_devices_per_process", "gpus_per_process", "gpus_per_task"):
    value = getattr(args, flag, None)
    if value is not None and value < 1:
      raise ConfigError(f"--{flag}={value}: give at least 1.")
  remote = args.target in ("kubernetes", "tpu-vm")  # the interpreter of the machines that run it
  run = common.Launch(common.check_train_args(train_args), "python" if remote else sys.executable,
                      args.cpu_devices_per_process, args.dry_run)
  if args.target == "local":
    from research.launch import local

    return local.run(run, args.num_processes, args.gpus_per_process)
  if args.target == "slurm":
    from research.launch import slurm

    return slurm.run(run, slurm.Layout(args.job_name, args.nodes, args.tasks_per_node, args.gpus_per_task,
                                       args.partition, args.time), args.wait)
  if args.target == "kubernetes":
    from research.launch import kubernetes

    return kubernetes.run(run, kubernetes.Layout(args.name, args.image, args.num_processes, args.port,
                                                 args.gpus_per_process, args.repo_dir, args.volume_claim,
                                                 args.mount_path), args.namespace)
  from research.launch import tpu_vm

  return tpu_vm.run(run, tpu_vm.Layout(args.tpu, args.zone, args.project, args.repo_url, args.ref,
                                       not args.skip_install))


def main(argv: list[str]) -> int:
  try:
    return launch(argv)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("error: interrupted; checkpoints already written are intact.", file=sys.stderr)
    return 130
