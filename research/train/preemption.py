"""Preemption: SIGTERM / SIGINT become a clean stop with a checkpoint.

The handler only sets a flag; the loop finishes the step it is in, saves, waits
for the write and exits 0. A signal during start-up (data loading, restore,
compilation) stops the run before its first step, or right after it with a
checkpoint. A second SIGINT interrupts at once (Ctrl-C twice); SIGTERM followed
by SIGINT is still one stop. After a stop, scripts/train.py ignores both
signals while the process exits (research/cli.py). With several processes, all
must stop at the same step: each process's flag is gathered from all of them at
sync points, which every process reaches at the same step. (JAX's own preemption
service never sees SIGTERM: research/distributed.py keeps the signal here.)

JAX is imported only when needed, so scripts/train.py enters the guard before
it imports JAX, and no moment of a run is left to the default handlers.
"""

from __future__ import annotations

import signal
import threading


class PreemptionGuard:
  """A context manager that turns SIGTERM and SIGINT into a request to stop, which the loop asks about."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name: str | None = None
    self._received = 0  # 1 + the index in SIGNALS of the first signal this process received
    self._previous = {}

  def __enter__(self) -> "PreemptionGuard":
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    if self.signal_name == "SIGINT" and signum == signal.SIGINT:
      raise KeyboardInterrupt  # Second Ctrl-C: the user wants out now.
    # The first handled names the stop (signals pending together are handled in signal-number order).
    if not self.signal_name:
      self.signal_name, self._received = signal.Signals(signum).name, self.SIGNALS.index(signum) + 1

  def signalled(self) -> bool:
    """Whether any process received a signal; with several processes, all call this at the same point."""
    import jax

    if jax.process_count() == 1:
      return self.signal_name is not None
    import numpy as np
    from jax.experimental import multihost_utils

    gathered = np.asarray(multihost_utils.process_allgather(np.array(self._received, np.int32))).ravel()
    first = next((i for i, code in enumerate(gathered) if code), None)
    if first is not None and self.signal_name is None:  # this process was not signalled: say which one was
      self.signal_name = f"{self.SIGNALS[gathered[first] - 1].name} to process {first}"
    return first is not None

  def requested(self, sync: bool) -> bool:
    """Whether to stop after this step. `sync` marks steps where every process calls this together; a signal seen
    by one process of several is decided together at the next one."""
    import jax

    if jax.process_count() == 1:
      return self.signal_name is not None
    return sync and self.signalled()
