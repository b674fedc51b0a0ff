"""`scripts/serve.py`: flags -> a model repository, keys and the app, run by uvicorn.

Exit codes: 0 after a clean stop (SIGTERM or Ctrl-C: uvicorn stops accepting, finishes the requests in
flight within `--drain_s`, and exits); 2 bad flags or no model loadable, in one line.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys

from research.cli import entry_point, script_parser
from research.errors import ConfigError

LOOPBACK = {"localhost"}


def is_loopback(host: str) -> bool:
  if host in LOOPBACK:
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return False


def _server_class():
  import uvicorn

  class Server(uvicorn.Server):
    """uvicorn raises the stop signal again after draining, so the process dies by it (exit -15); here a drained
    stop is a clean exit 0."""

    def handle_exit(self, sig, frame) -> None:
      super().handle_exit(sig, frame)
      self._captured_signals.clear()

  return Server


def parser() -> argparse.ArgumentParser:
  p = script_parser("serve.py", "Serve exported models over HTTP: a JSON API and the Open Inference Protocol, "
                    "with dynamic batching,\nAPI keys and Prometheus metrics (docs/serving.md).",
                    "  python scripts/serve.py --keys keys.json --add_key team-a --key_models mnist\n"
                    "  python scripts/serve.py --model mnist=runs/mnist_mlp/export --keys keys.json --port 8000\n"
                    "  python scripts/serve.py --models models --version_policy latest:2 --keys keys.json")
  p.add_argument("--models", metavar="DIR", help="a model repository: DIR/<name>/<version>/ export directories")
  p.add_argument("--model", action="append", default=[], metavar="NAME=EXPORT_DIR",
                 help="serve one export as NAME (version 1); repeatable")
  p.add_argument("--poll_s", type=float, default=2, metavar="S",
                 help="look for new, changed and removed versions every S seconds (default 2; 0: never)")
  p.add_argument("--version_policy", default="latest:1", metavar="POLICY",
                 help="versions served: latest:N (the N newest that load; default latest:1), all, or specific:1,3")
  p.add_argument("--backend", default="onnx", choices=("onnx", "jax"),
                 help="the runtime: onnx (default) or jax (the StableHLO export, every batch bucket compiled first)")
  threads = default_model_threads()
  p.add_argument("--model_threads", type=int, default=threads, metavar="N",
                 help="onnxruntime's threads per model call, idle ones sleeping (default: the cores less the one the "
                      f"HTTP event loop keeps, here {threads}; 0: onnxruntime's own, spinning)")
  p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
  p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
  p.add_argument("--keys", metavar="FILE", help="the API key file (salted hashes; see --add_key)")
  p.add_argument("--no_auth", action="store_true", help="serve without keys: only allowed on a loopback --host")
  p.add_argument("--add_key", metavar="ID", help="add a key with this id to --keys FILE, print it once, and exit")
  p.add_argument("--key_models", default="*", metavar="A,B", help="with --add_key: the models it may call (* = all)")
  p.add_argument("--key_admin", action="store_true", help="with --add_key: the key may administer the server")
  p.add_argument("--key_rate", type=float, default=0.0, metavar="R", help="with --add_key: requests/s (0 = no limit)")
  p.add_argument("--max_batch_size", type=int, default=64, metavar="ROWS", help="rows per model call (default 64)")
  p.add_argument("--max_wait_ms", type=float, default=2.0, metavar="MS",
                 help="how long a batch waits to fill (default 2; 0 turns batching off)")
  p.add_argument("--max_queue_rows", type=int, default=4096, metavar="ROWS",
                 help="rows waiting per model before requests get 503 (default 4096)")
  p.add_argument("--max_streams", type=int, default=16, metavar="N",
                 help="text generations at a time per model version, sharing each decode step (default 16)")
  p.add_argument("--max_body_mb", type=float, default=16, metavar="MB", help="largest request body (default 16)")
  p.add_argument("--timeout_s", type=float, default=30, metavar="S", help="a request's time limit (default 30)")
  p.add_argument("--drain_s", type=float, default=10, metavar="S", help="on SIGTERM, time to finish requests")
  p.add_argument("--audit_log", metavar="FILE", help="write one JSON line per request here (docs/serving.md)")
  p.add_argument("--audit_max_mb", type=float, default=64, metavar="MB", help="rotate the audit log at this size")
  p.add_argument("--audit_backups", type=int, default=5, metavar="N", help="rotated audit logs kept (default 5)")
  p.add_argument("--ssl_certfile", metavar="PEM", help="serve HTTPS with this certificate (with --ssl_keyfile)")
  p.add_argument("--ssl_keyfile", metavar="PEM", help="the certificate's private key")
  return p


def default_model_threads() -> int:
  """The cores this process may use, less one for the event loop (at least 1): onnxruntime's default, a spinning
  thread per core, took the event loop's CPU (docs/performance.md, serving)."""
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
  return max(1, cores - 1)


def _check(args) -> None:
  if args.model_threads < 0:
    raise ConfigError(f"--model_threads must be >= 0, got {args.model_threads}.")
  for flag in ("max_batch_size", "max_queue_rows", "max_streams"):
    if getattr(args, flag) < 1:
      raise ConfigError(f"--{flag} must be >= 1, got {getattr(args, flag)}.")
  if args.audit_backups < 0:
    raise ConfigError(f"--audit_backups must be >= 0, got {args.audit_backups}.")
  for flag in ("max_wait_ms", "max_body_mb", "timeout_s", "drain_s", "audit_max_mb", "poll_s"):
    if not getattr(args, flag) >= 0:
      raise ConfigError(f"--{flag} must be >= 0, got {getattr(args, flag)}.")
  if not 0 <= args.port < 65536:
    raise ConfigError(f"--port must be from 0 to 65535, got {args.port}.")
  if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
    raise ConfigError("--ssl_certfile and --ssl_keyfile go together.")
  if args.no_auth and not is_loopback(args.host):
    raise ConfigError(f"--no_auth is only allowed on a loopback --host (127.0.0.1), not {args.host}: give --keys.")
  if not args.no_auth and not args.keys:
    raise ConfigError("API keys are required: --keys FILE (create one with --keys FILE --add_key ID), or "
                      "--no_auth on a loopback --host.")


def serve(argv: list[str]) -> None:
  args = parser().parse_args(argv)
  if args.add_key:
    from research.serve.auth import add_key

    if not args.keys:
      raise ConfigError("--add_key needs --keys FILE: the key file to add it to.")
    models = [m.strip() for m in args.key_models.split(",") if m.strip()]
    print(add_key(args.keys, args.add_key, models or ["*"], args.key_admin, args.key_rate))
    return
  _check(args)
  import uvicorn

  from research.serve import repository
  from research.serve.app import create_app
  from research.serve.audit import AuditLog
  from research.serve.auth import KeyRing
  from research.serve.predictor import bucket_sizes
  from research.serve.watcher import Watcher

  keys = None if args.no_auth else KeyRing.load(args.keys)
  audit = AuditLog(args.audit_log, int(args.audit_max_mb * 2**20), args.audit_backups) if args.audit_log else None
  batching = dict(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                  max_queue_rows=args.max_queue_rows)
  policy = repository.Policy.parse(args.version_policy)
  buckets = bucket_sizes(args.max_batch_size) if args.backend == "jax" else ()  # onnxruntime needs no compiles
  repo = repository.load(args.models, args.model, batching, policy, args.backend, buckets, args.model_threads)
  sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((args.host, args.port))
    sock.listen(2048)  # connections wait here until uvicorn accepts them
  except OSError as e:
    raise ConfigError(f"cannot bind {args.host}:{args.port}: {e.strerror}; choose another --port.") from None
  scheme, port = "https" if args.ssl_certfile else "http", sock.getsockname()[1]
  served = ", ".join(f"{n} (versions {', '.join(map(str, sorted(v)))})" for n, v in sorted(repo.models.items()))
  say = lambda line: print(line, file=sys.stderr, flush=True)
  watcher = Watcher(repo, args.poll_s) if args.poll_s else None

  def ready() -> None:
    say(f"serving {served} on {scheme}://{args.host}:{port}")  # the first line: scripts wait for it
    for failure, reason in repo.failures.items():
      say(f"warning: {failure} is not served: {reason}")
    repo.say = say  # versions loaded, unloaded or failing from now on
    if watcher:
      watcher.start()

  app = create_app(repo, keys=keys, open_metrics=is_loopback(args.host), max_body_bytes=int(args.max_body_mb * 2**20),
                   timeout_s=args.timeout_s, audit=audit, on_ready=ready, max_streams=args.max_streams)
  config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=args.drain_s,
                          ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
  try:
    _server_class()(config).run(sockets=[sock])
  finally:
    if audit:
      audit.close()


def main(argv: list[str]) -> int:
  try:
    with entry_point(argv, None):
      serve(argv)
    return 0
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    return 0
