"""The servers of the serving benchmark, each a subprocess on a free loopback port, ready when its health URL is.

- the library's scripts/serve.py (both benchmark models in one server, a batching setting per server);
- peer servers from PyPI, each in its own virtualenv under `~/.cache/research/bench-peers/<peer>/` (peers pin
  packages that conflict with the project's, e.g. MLServer wants uvloop<0.22), created by `install` with the
  pinned versions below. Each serves the same ONNX file in onnxruntime through a small wrapper
  (research/bench/peer_*.py) with the peer's own batching on at the same size and wait as the library's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "research" / "bench-peers"
# The versions measured (docs/benchmarks/serving.md); onnxruntime as in the project's `onnx` extra.
PEERS = {"mlserver": ["mlserver==1.7.1", "onnxruntime==1.32.0", "uvloop<0.22"],
         "litserve": ["litserve==0.2.19", "onnxruntime==1.32.0"]}


def python_of(peer: str) -> Path | None:
  """The peer's virtualenv interpreter, or None while it is not installed."""
  return CACHE / peer / "bin" / "python" if (CACHE / peer / "installed").exists() else None


def install(peer: str) -> Path:
  """Creates the peer's virtualenv and pip-installs its pinned packages (a minute or two, once)."""
  venv = CACHE / peer
  shutil.rmtree(venv, ignore_errors=True)
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                  *PEERS[peer]], check=True)
  (venv / "installed").write_text("\n".join(PEERS[peer]) + "\n")
  return venv / "bin" / "python"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  """A server subprocess (its output in a log file, read back on failure); `url` is where requests go. Started
  when made; `ready()` waits until it answers, so that several can start at once."""

  def __init__(self, name: str, command: list[str], health: str, url: str, *, env: dict | None = None):
    self.name, self.url, self.health = name, url, health
    # closed by stop(); read back by output() when the server fails
    self.log = tempfile.NamedTemporaryFile("w+", prefix=f"research-bench-{name}-", suffix=".log")  # noqa: SIM115
    # its own process group: a peer's workers are stopped with it
    self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
                                 env={**os.environ, **(env or {})}, start_new_session=True)

  def ready(self, timeout_s: float = 180) -> "Server":
    deadline = time.monotonic() + timeout_s
    while not _answers(self.health):
      if self.proc.poll() is not None or time.monotonic() > deadline:
        output = self.output()
        self.stop()
        raise RuntimeError(f"{self.name} did not start: {output[-1500:]}")
      time.sleep(0.2)
    return self

  def cpu_seconds(self) -> float:
    """CPU time (user + system) of the server's live processes so far: its own and its workers'."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
      try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
      except OSError:  # gone meanwhile
        continue
      if int(fields[2]) == self.proc.pid:  # the process group: start_new_session made the server its leader
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")

  def output(self) -> str:
    self.log.seek(0)
    return self.log.read()

  def stop(self) -> None:
    if self.proc.poll() is None:
      os.killpg(self.proc.pid, signal.SIGTERM)
      try:
        self.proc.wait(30)
      except subprocess.TimeoutExpired:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
    self.log.close()


def _answers(url: str) -> bool:
  try:
    with urllib.request.urlopen(url, timeout=2) as r:
      return r.status == 200
  except (urllib.error.URLError, ConnectionError, TimeoutError):
    return False


def research(models: dict[str, Path], flags: list[str], name: str) -> Server:
  """scripts/serve.py serving each NAME=EXPORT_DIR of `models` without keys; `url` is the server's root."""
  port = free_port()
  command = [sys.executable, str(ROOT / "scripts" / "serve.py"), "--no_auth", "--port", str(port), *flags,
             *[arg for model, path in models.items() for arg in ("--model", f"{model}={path}")]]
  return Server(name, command, f"http://127.0.0.1:{port}/readyz", f"http://127.0.0.1:{port}")


def litserve(onnx: Path, max_batch_size: int, max_wait_ms: float) -> Server:
  """`url` takes Open Inference Protocol JSON tensors (the ONNX model's inputs) with POST."""
  port = free_port()
  command = [str(python_of("litserve")), str(HERE / "peer_litserve.py"), str(onnx), str(port), str(max_batch_size),
             str(max_wait_ms)]
  return Server("litserve", command, f"http://127.0.0.1:{port}/health", f"http://127.0.0.1:{port}/predict")


def mlserver(model: str, onnx: Path, max_batch_size: int, max_wait_ms: float, workdir: Path) -> Server:
  """MLServer in-process (`parallel_workers: 0`), its adaptive batching on; `url` is the model's v2 infer URL."""
  port, repository = free_port(), workdir / f"mlserver-{model}"
  (repository / model).mkdir(parents=True)
  settings = {"host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
              "parallel_workers": 0, "debug": False}
  (repository / "settings.json").write_text(json.dumps(settings))
  (repository / model / "model-settings.json").write_text(json.dumps({
      "name": model, "implementation": "peer_mlserver.OnnxModel", "max_batch_size": max_batch_size,
      "max_batch_time": max_wait_ms / 1000, "parameters": {"uri": str(onnx)}}))
  command = [str(python_of("mlserver").parent / "mlserver"), "start", str(repository)]
  base = f"http://127.0.0.1:{port}/v2/models/{model}"
  return Server("mlserver", command, base + "/ready", base + "/infer", env={"PYTHONPATH": str(HERE)})
