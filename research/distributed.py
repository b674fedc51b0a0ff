"""Joining a multi-process run: `jax.distributed.initialize` from flags or from the cluster's environment.

Every process runs the same command. Process 0's address, the process count and
this process's id come from flags (`--coordinator_address HOST:PORT
--num_processes N --process_id I`), or, with `--coordinator_address=auto`, from
the environment JAX detects itself (SLURM, TPU VMs, Open MPI, Kubernetes with
`jax[k8s]`).

A lost process must not leave the others hanging in a collective. A watchdog
thread in every process beats through the coordination service's key-value
store; process 0 notices a process silent for `heartbeat_timeout_s` (or one
that failed) and publishes the verdict; every survivor prints one line naming
the lost process and exits 1, whatever its main thread is blocked in. JAX's
own heartbeat (whose reaction is a C++ abort with a page of stack trace) is set
to twice the bound, as a backstop for a coordinator that stops answering.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import time

from research.errors import ConfigError, TrainingError, WorkdirWriteError

AUTO = "auto"
LOST_EXIT_CODE = 1
_KEYS = "research/watchdog/"
_watchdog = None  # this process's Watchdog, in a multi-process run


def initialize(coordinator_address: str | None, num_processes: int | None, process_id: int | None, *,
               init_timeout_s: int = 300, heartbeat_timeout_s: int = 100) -> None:
  """Joins the run when a coordinator is given (or `auto`); a lone process (no flags) does nothing.

  `init_timeout_s` bounds the wait for every process to arrive; `heartbeat_timeout_s` bounds how long the others
  take to notice a lost process (they then exit 1 naming it).
  """
  _check(coordinator_address, num_processes, process_id, init_timeout_s, heartbeat_timeout_s)
  if coordinator_address is None:
    return
  import jax

  timeouts = {"initialization_timeout": init_timeout_s, "heartbeat_timeout_seconds": 2 * heartbeat_timeout_s + 5}
  with _sigterm_kept():
    if coordinator_address == AUTO:
      jax.distributed.initialize(local_device_ids=_slurm_host_devices(), **timeouts)
    else:
      jax.distributed.initialize(coordinator_address, num_processes=num_processes, process_id=process_id, **timeouts)
  if jax.process_count() > 1:
    global _watchdog
    from jax._src import distributed as jax_distributed

    # the coordination client jax.distributed made (its key-value store carries the beats)
    _watchdog = Watchdog(jax_distributed.global_state.client, jax.process_index(), jax.process_count(),
                         heartbeat_timeout_s)
    _watchdog.start()


@contextlib.contextmanager
def _sigterm_kept():
  """SIGTERM stays with this process's handler (research/train/preemption.py) across `jax.distributed.initialize`.

  JAX's preemption service installs its own SIGTERM handler there. Its agreement on a stop step is unsound next to
  orbax, whose save-finalize thread reports the saved step to it on process 0, moving that process's step count
  back: process 0 can then miss the agreed step while the others stop at it, and the run hangs. The signal is held
  back meanwhile, so one that arrives then is not lost. In a thread other than the main one, nothing is changed.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  handler = signal.getsignal(signal.SIGTERM)
  signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
  try:
    yield
  finally:
    if handler is not None:  # (None: a handler installed outside Python, left as it is)
      signal.signal(signal.SIGTERM, handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def finish(error: BaseException | None) -> None:
  """Ends this process's part: a finished process is no longer watched; a failed one stops the others at once.

  A failure that is not the user's (a collective that broke because a peer died) first waits one bound for the
  watchdog, which then exits naming the lost process: that, not the broken collective, is the cause. A failed
  process leaves without JAX's shutdown barrier, which the others never reach (it would end in a C++ abort).
  """
  if _watchdog is None:
    return
  # (A CheckpointError is waited on too: a save is a collective of every process, and a lost peer breaks it.)
  if error is not None and not isinstance(error, (ConfigError, TrainingError, WorkdirWriteError)):
    time.sleep(_watchdog.bound_s * 1.5)  # the watchdog's verdict, if a peer was lost, ends the process meanwhile
  _watchdog.finish(failed=error is not None)
  if error is not None:
    atexit.register(_exit_now)  # registered after JAX's own exit handlers, so it runs before them


def _exit_now() -> None:
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(LOST_EXIT_CODE)


def _check(coordinator_address, num_processes, process_id, init_timeout_s, heartbeat_timeout_s) -> None:
  for flag, value in (("--init_timeout_s", init_timeout_s), ("--heartbeat_timeout_s", heartbeat_timeout_s)):
    if value < 1:
      raise ConfigError(f"{flag}={value}: give a whole number of seconds, at least 1.")
  if coordinator_address is None:
    if num_processes is not None or process_id is not None:
      raise ConfigError("--num_processes and --process_id need --coordinator_address (host:port of process 0).")
    return
  if coordinator_address == AUTO:
    if num_processes is not None or process_id is not None:
      raise ConfigError("--coordinator_address=auto takes the process count and id from the cluster; "
                        "leave out --num_processes and --process_id.")
    return
  host, _, port = coordinator_address.rpartition(":")
  if not host or not port.isdigit():
    raise ConfigError(f"--coordinator_address={coordinator_address}: give HOST:PORT of process 0 "
                      f"(e.g. 10.0.0.1:12355), or auto on a cluster JAX detects.")
  if num_processes is None or process_id is None:
    raise ConfigError("--coordinator_address needs --num_processes and --process_id.")
  if num_processes < 1:
    raise ConfigError(f"--num_processes={num_processes}: a run has at least 1 process.")
  if not 0 <= process_id < num_processes:
    raise ConfigError(f"--process_id={process_id}: the ids of {num_processes} processes are 0 to {num_processes - 1}.")


def _slurm_host_devices() -> list[int] | None:
  """With one SLURM task per host, all of the host's GPUs (JAX would give each task only GPU SLURM_LOCALID)."""
  per_node = os.environ.get("SLURM_STEP_TASKS_PER_NODE", "").split("(")[0]
  gpus = os.environ.get("SLURM_GPUS_ON_NODE", "")
  if per_node == "1" and gpus.isdigit() and int(gpus) > 1:
    return list(range(int(gpus)))
  return None


class Watchdog(threading.Thread):
  """Beats every `bound_s / 5` seconds; process 0 declares a process lost after `bound_s` without a beat.

  Keys (under research/watchdog/): beat/<id> a counter, done/<id> a finished process (silent by right),
  failed/<id> a process that stopped on an error, verdict: what process 0 decided, read by the others.
  """

  def __init__(self, client, process_id: int, num_processes: int, bound_s: float):
    super().__init__(name="research-watchdog", daemon=True)
    self.client, self.id, self.n, self.bound_s = client, process_id, num_processes, bound_s
    self.stopped = threading.Event()

  def finish(self, failed: bool) -> None:
    self.stopped.set()
    try:
      self.client.key_value_set(f"{_KEYS}{'failed' if failed else 'done'}/{self.id}", "1", allow_overwrite=True)
    except Exception:  # noqa: BLE001, S110  (the coordinator may be gone already; nothing left to tell it)
      pass

  def run(self) -> None:
    period = self.bound_s / 5
    beats, heard, last_seen = 0, time.monotonic(), {i: ("", time.monotonic()) for i in range(self.n)}
    while not self.stopped.wait(period):
      try:
        beats += 1
        self.client.key_value_set(f"{_KEYS}beat/{self.id}", str(beats), allow_overwrite=True)
        verdict = self._judge(last_seen) if self.id == 0 else self._verdict()
        heard = time.monotonic()
      except Exception:  # noqa: BLE001  (the coordination service, in process 0, does not answer)
        if self.stopped.is_set():
          return
        verdict = f"lost contact with process 0, the coordinator, for {self.bound_s:g} s" if (
            time.monotonic() - heard > self.bound_s) else None
      if verdict and not self.stopped.is_set():
        print(f"error: {verdict}; stopping this process ({self.id}). See that process's log for why; "
              f"rerun the same command to resume from the last checkpoint.", file=sys.stderr, flush=True)
        os._exit(LOST_EXIT_CODE)  # the main thread may be blocked in a collective that never returns

  def _verdict(self) -> str | None:
    entries = dict(self.client.key_value_dir_get(f"{_KEYS}verdict/"))
    return next(iter(entries.values()), None)

  def _judge(self, last_seen: dict) -> str | None:
    """Process 0: the first failed process, or the processes silent for `bound_s`, published for the others."""
    entries = dict(self.client.key_value_dir_get(_KEYS))

    def value(kind: str, i: int) -> str | None:
      return entries.get(f"{_KEYS}{kind}/{i}")

    failed = [i for i in range(self.n) if value("failed", i)]
    now = time.monotonic()
    for i in range(self.n):
      beat = value("beat", i) or ""
      if beat != last_seen[i][0]:
        last_seen[i] = (beat, now)
    silent = [i for i in range(self.n) if not value("done", i) and now - last_seen[i][1] > self.bound_s]
    if failed:
      verdict = f"process {failed[0]} of this run stopped on an error"
    elif silent:
      verdict = (f"lost process{'es' if len(silent) > 1 else ''} {', '.join(map(str, silent))} of this run "
                 f"(no heartbeat for {self.bound_s:g} s, --heartbeat_timeout_s)")
    else:
      return None
    self.client.key_value_set(f"{_KEYS}verdict/0", verdict, allow_overwrite=True)
    return verdict
