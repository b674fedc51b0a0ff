"""Preemption: SIGTERM / SIGINT (and JAX's preemption notice) become a clean stop with a checkpoint.

The handler only sets a flag; the loop finishes the step it is in, saves, waits
for the write and exits 0. A signal during start-up (data loading, restore,
compilation) stops the run before its first step, or right after it with a
checkpoint. A second SIGINT interrupts at once (Ctrl-C twice); SIGTERM followed
by SIGINT is still one stop. After a stop, scripts/train.py ignores both
signals while the process exits (research/cli.py). With several processes, all
must stop at the same step: the flag is combined across processes at sync points, and JAX's
preemption sync point (`multihost_utils.reached_preemption_sync_point`, which
TPU VMs' maintenance notices drive) is consulted every step.

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
    self._previous = {}
    self._jax_sync_point = True  # until the cluster turns out to have no preemption service

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
    self.signal_name = self.signal_name or signal.Signals(signum).name

  def signalled(self) -> bool:
    """Whether any process received a signal; with several processes, all call this at the same point."""
    import jax

    if jax.process_count() == 1:
      return self.signal_name is not None
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array(self.signal_name is not None))))

  def requested(self, step: int, sync: bool) -> bool:
    """Whether to stop after `step`. `sync` marks steps where every process calls this together."""
    import jax

    if jax.process_count() == 1:
      return self.signal_name is not None
    from jax.experimental import multihost_utils

    if self._jax_sync_point:
      try:  # True on every process at the same step, by construction.
        if multihost_utils.reached_preemption_sync_point(step):
          self.signal_name = self.signal_name or "preemption notice"
          return True
      except RuntimeError:  # No preemption service in this cluster set-up: signals only.
        self._jax_sync_point = False
    if not sync:
      return False  # A signal seen by one process is decided together at the next sync point.
    return self.signalled()
