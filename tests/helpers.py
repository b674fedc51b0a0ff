"""Helpers for tests that run the real scripts in subprocesses, and trained runs shared by the whole test run."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

ROOT = Path(__file__).resolve().parents[1]


def env_with_devices(devices: int) -> dict:
  env = dict(os.environ)
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
  return env


def env_without_tensorflow(env: dict | None = None) -> dict:
  """`env` (default: this process's environment) in which `import tensorflow` fails, as without the `tf` extra (tests/without_tensorflow): for the
  TensorBoard servers the tests start."""
  env, hidden = dict(os.environ if env is None else env), str(ROOT / "tests" / "without_tensorflow")
  return {**env, "PYTHONPATH": os.pathsep.join(p for p in (hidden, env.get("PYTHONPATH")) if p)}


def run_script(script: str, *args: str, devices: int = 8, timeout: float = 300,
               unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
  """Runs scripts/<script> to completion (without the environment variables in `unset`); a hung JAX process is
  killed with SIGKILL at `timeout`."""
  env = {k: v for k, v in env_with_devices(devices).items() if k not in unset}
  proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / script), *args], cwd=ROOT,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGKILL)  # A hung multi-device process ignores SIGTERM.
    out, err = proc.communicate()
    raise AssertionError(f"{script} {' '.join(args)} timed out after {timeout}s:\n{err[-3000:]}")
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def free_port() -> int:
  """A loopback TCP port nothing listens on now."""
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_processes(workdir, *args: str, processes: int = 2, devices: int = 4) -> list[subprocess.Popen]:
  """Starts scripts/train.py as one multi-process JAX run on loopback (`devices` CPU devices each)."""
  port = free_port()
  return [subprocess.Popen(
      [sys.executable, str(ROOT / "scripts/train.py"), *args, "--workdir", str(workdir),
       f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}", f"--process_id={i}"],
      cwd=ROOT, env=env_with_devices(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(processes)]


def train(workdir, *overrides: str, config: str = "configs/mnist_mlp.py:smoke", devices: int = 8,
          unset: tuple[str, ...] = ()) -> str:
  done = run_script("train.py", "--config", config, "--workdir", str(workdir), *overrides, devices=devices,
                    unset=unset)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stderr


def train_here(workdir, *overrides: str, config: str = "configs/mnist_mlp.py:smoke") -> dict[str, float]:
  """`train` in this process (no interpreter start-up or JAX import to pay; the same parameters, bit for bit, as
  scripts/train.py on the 8 devices conftest sets up): returns research.train.loop.train's final eval metrics."""
  from research import config as config_lib
  from research.train.loop import train as train_loop

  return train_loop(config_lib.apply_overrides(config_lib.load(config), overrides), workdir)


@dataclasses.dataclass(frozen=True)
class SharedRun:
  workdir: Path  # read-only: copy it (shutil.copytree) before resuming, damaging or evaluating into it
  final: dict  # research.train.loop.train's return value (in-process runs; {} for script runs)
  log: str  # scripts/train.py's stderr (script runs; "" for in-process runs)


def shared_run(tmp_path_factory, config: str, *overrides: str, script: bool = False) -> SharedRun:
  """A finished run of `config` with `overrides`, trained once per pytest run however many test modules and xdist
  workers ask for it: the same smoke configs used to be trained again and again, module by module.

  The run lives under the pytest run's temporary directory, which xdist's workers share (the parent of each
  worker's own), guarded by a file lock and marked done once it finished. `script=True` trains with
  scripts/train.py and keeps its stderr; otherwise the run is trained in this process (`train_here`). Never write
  into `workdir`: other modules read it, maybe at the same time.
  """
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent
  key = hashlib.sha256(json.dumps([config, overrides, script]).encode()).hexdigest()[:12]
  root = base / "shared_runs" / f"{Path(config.partition(':')[0]).stem}-{key}"
  root.mkdir(parents=True, exist_ok=True)
  with open(root / "lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes: the other worker waits for the training
    if not (root / "done").exists():
      shutil.rmtree(root / "run", ignore_errors=True)  # what an earlier, failed try left
      if script:
        (root / "train.log").write_text(train(root / "run", *overrides, config=config))
      else:
        (root / "final.json").write_text(json.dumps(train_here(root / "run", *overrides, config=config)))
      (root / "done").touch()
  read = lambda name, empty: (root / name).read_text() if (root / name).exists() else empty
  return SharedRun(root / "run", json.loads(read("final.json", "{}")), read("train.log", ""))


def smoke_run(tmp_path_factory, name: str) -> SharedRun:
  """The shared run of configs/<name>.py:smoke. mnist_mlp's is trained by scripts/train.py (test_scripts checks its
  log; test_resilience and test_train compare subprocess runs with it, bit for bit); the others in this process."""
  return shared_run(tmp_path_factory, f"configs/{name}.py:smoke", script=name == "mnist_mlp")


def checkpoint_params(workdir, step: int) -> dict[str, np.ndarray]:
  """The parameters saved at `step`, read straight from disk as numpy arrays keyed by path."""
  return {k[len("params/"):]: v for k, v in checkpoint_arrays(workdir, step).items() if k.startswith("params/")}


def checkpoint_arrays(workdir, step: int) -> dict[str, np.ndarray]:
  """Every array saved at `step` (params/..., opt_state/..., step, rng), read straight from disk."""
  path = Path(workdir).absolute() / "checkpoints" / str(step) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  metadata = checkpointer.metadata(path)
  metadata = getattr(metadata, "item_metadata", metadata)
  metadata = getattr(metadata, "tree", metadata)
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)  # any device count
  tree = checkpointer.restore(path, restore_args=as_numpy)
  flat = {}

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}/")
      else:
        flat[f"{prefix}{k}"] = np.asarray(v)

  walk(tree, "")
  return flat


def zoo_batch(config_name: str, config, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """8 random examples in the form a zoo config's `:smoke` model trains on (for one-step tests)."""
  if config_name == "shakespeare_gpt":  # windows of block_size + 1 byte ids (smoke: 32)
    return {"tokens": rng.integers(0, 256, (8, 33)).astype(np.int32)}
  if config.data.input_key == "tokens":  # token ids (smoke vocabularies: 500), padding (0) ending some rows
    tokens = rng.integers(1, 500, (8, 32)).astype(np.int32)
    tokens[::2, 20:] = 0
    return {"tokens": tokens, "label": rng.integers(0, 2, 8).astype(np.int32)}
  images = rng.standard_normal((8, 28, 28, 1)).astype(np.float32)
  if config_name == "mnist_vae":  # pixel probabilities in [0, 1], no label
    return {"image": 1.0 / (1.0 + np.exp(-images))}
  if "flatten" in config.data.preprocess:
    images = images.reshape(8, -1)
  return {"image": images, "label": rng.integers(0, 10, 8).astype(np.int32)}
