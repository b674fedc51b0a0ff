"""A quiet console for the entry points: other libraries' warnings go to a log file, the library's own stay.

The libraries under the scripts warn about things that are not news to the
person at the terminal: Orbax says that a read-only checkpoint manager is read
only on every `scripts/evaluate.py`, exporters note the ONNX / TFLite
conversions' internals, TensorFlow's C++ code logs through absl. `quiet()`
sends all of that to one file, and leaves on the console what the library
itself prints for the user (progress, results, `warning: ...` and `error: ...`
lines, all written with `print`). `--verbose` on a script leaves everything on
the console.

- Python `logging` records (absl, orbax, jax, onnx_ir, tensorflow, ...) and
  `warnings.warn` (through `logging.captureWarnings`) go to the log file:
  `WORKDIR/logs/warnings.log` for a script that has a workdir, otherwise
  `research-<uid>-warnings.log` in the system's temporary directory. The file is
  created only when something is written to it, and runs append to it, each
  under a header line naming the command.
- Exceptions that end a library's background thread, or that Python can only
  report (in an `atexit` callback, a destructor), go to the log file too.
- C++ logging of TensorFlow / XLA / gRPC writes to the process's stderr
  directly, so it is turned down with environment variables that those
  libraries read when they load (`NATIVE_QUIET`; errors still show): the
  scripts enter `quiet()` before anything imports them. A variable you have
  set is left as it is.

Importing research never calls this: only entry points do (research/cli.py,
research/export/cli.py), as they do for the XLA flags.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator, MutableMapping, Sequence

LOG_NAME = "warnings.log"
# Read by TensorFlow (and the TSL logging inside jaxlib) and by gRPC when they load: 2 drops INFO and WARNING
# lines of their C++ logging, and keeps errors.
NATIVE_QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2", "GRPC_VERBOSITY": "ERROR"}
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_active = None  # the handler of the innermost quiet(), for native_output_to_log


def temp_log_path() -> Path:
  uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
  return Path(tempfile.gettempdir()) / f"research-{uid}-{LOG_NAME}"


def log_path(workdir: str | Path | None, *, create_workdir: bool = False) -> Path:
  """WORKDIR/logs/warnings.log if there is a workdir (or the script will create it), else a temp-dir file."""
  if workdir and (create_workdir or Path(workdir).is_dir()):
    return Path(workdir) / "logs" / LOG_NAME
  return temp_log_path()


class LogFileHandler(logging.Handler):
  """Appends records to `path`, opened (with its folder) on the first record; falls back to the temp dir."""

  def __init__(self, path: Path, header: str = ""):
    super().__init__()
    self.path, self.header = Path(path), header
    self.stream = None
    self.setFormatter(logging.Formatter(FORMAT))

  def _open(self):
    for path in dict.fromkeys((self.path, temp_log_path())):
      try:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = open(path, "a", encoding="utf-8")
        self.path = path
        break
      except OSError:
        continue
    if self.stream is not None and self.header:
      self.stream.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {self.header}\n")

  def emit(self, record: logging.LogRecord) -> None:
    try:
      if self.stream is None:
        self._open()
        if self.stream is None:
          return  # nowhere writable: drop it rather than disturb the console
      self.stream.write(self.format(record) + "\n")
      self.stream.flush()
    except Exception:  # noqa: BLE001  (e.g. a full disk: the record is dropped; the console stays clean and the
      pass  # run goes on, and the library's own error line names the problem)

  def close(self) -> None:
    if self.stream is not None:
      self.stream.close()
      self.stream = None
    super().close()


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
  """A library's background thread that dies (e.g. TensorBoard's event writer on a full disk) logs its traceback
  to the file; the main thread's own error names the problem on the console."""
  logging.getLogger("research.threads").error(
      "thread %s died", getattr(args.thread, "name", "?"), exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def _log_unraisable(args) -> None:
  """An exception Python can only report (e.g. in an atexit callback of TensorBoard's writer): to the file."""
  logging.getLogger("research.unraisable").error(
      "%s: %r", args.err_msg or "Exception ignored in", args.object,
      exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


@contextlib.contextmanager
def quiet(log_file: str | Path, environ: MutableMapping[str, str] = os.environ,
          command: Sequence[str] | None = None) -> Iterator[LogFileHandler]:
  """Within it, `logging` and `warnings` go to `log_file` and native C++ logging is turned down.

  Enter it first in an entry point, before TensorFlow, jaxlib or absl are imported: the root logger has this
  handler only, so the libraries that configure logging on import when none is set (absl, TensorFlow) leave it.
  On exit, a process whose root logger had handlers before (e.g. under pytest) gets them back; a script's,
  which had none, keeps sending records to the file until it ends (libraries also log at exit).
  """
  added = {name: value for name, value in NATIVE_QUIET.items() if name not in environ}
  environ.update(added)
  header = " ".join(command if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]])
  handler = LogFileHandler(Path(log_file), header)
  global _active
  outer, _active = _active, handler
  root = logging.getLogger()
  previous = list(root.handlers)
  for old in previous:
    root.removeHandler(old)
  root.addHandler(handler)
  logging.captureWarnings(True)
  hooks = threading.excepthook, sys.unraisablehook
  threading.excepthook, sys.unraisablehook = _log_thread_exception, _log_unraisable
  try:
    yield handler
  finally:
    _active = outer
    for name in added:
      environ.pop(name, None)
    if previous:
      root.removeHandler(handler)
      handler.close()
      for old in previous:
        root.addHandler(old)
      logging.captureWarnings(False)
      threading.excepthook, sys.unraisablehook = hooks


@contextlib.contextmanager
def native_output_to_log() -> Iterator[None]:
  """Within `quiet()`, what native code writes to stderr (file descriptor 2) meanwhile goes to the log file.

  For short calls into C++ that print unconditionally, e.g. LiteRT's "INFO: Created TensorFlow Lite XNNPACK
  delegate for CPU." when an interpreter is made (no variable turns it off). Anything else written to stderr
  during the block goes there too, so keep the block to the one call. Outside `quiet()` it does nothing.
  """
  handler = _active
  if handler is None:
    yield
    return
  handler.acquire()
  try:
    if handler.stream is None:
      handler._open()
    stream = handler.stream
  finally:
    handler.release()
  if stream is None:
    yield
    return
  sys.stderr.flush()
  stream.flush()
  saved = os.dup(2)
  try:
    os.dup2(stream.fileno(), 2)
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)


def verbose_flag(argv: Sequence[str]) -> bool:
  """Whether `--verbose` is among the arguments (read before the parser runs, to set up logging first)."""
  return "--verbose" in argv


def flag_value(argv: Sequence[str], name: str) -> str | None:
  """The value of `--name VALUE` or `--name=VALUE` in argv (the last one), else None."""
  value = None
  for i, arg in enumerate(argv):
    if arg == name and i + 1 < len(argv):
      value = argv[i + 1]
    elif arg.startswith(name + "="):
      value = arg[len(name) + 1:]
  return value


VERBOSE_HELP = ("print other libraries' warnings and logs on the console (by default they go to "
                "WORKDIR/logs/warnings.log, or to research-<uid>-warnings.log in the temp dir without a workdir)")
