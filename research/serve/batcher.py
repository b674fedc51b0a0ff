"""Dynamic batching: concurrent requests merged into one model call, counted in rows, each caller gets its own rows.

A request of n rows waits until the batch being formed reaches `max_batch_size` rows or its first request has
waited `max_wait_ms` (only while requests come concurrently: after a model call that held a single request, the
next runs at once, so a lone client never waits); the merged batch runs once (in a worker thread, so the event
loop keeps accepting), and each caller receives exactly the slice of rows it sent. A request larger than `max_batch_size` runs alone.
The queue is bounded in rows: past `max_queue_rows` a request is refused at once (QueueFull: the server answers
503 with Retry-After) rather than waiting without end; each request also has a timeout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Callable, NamedTuple

import numpy as np


class QueueFull(RuntimeError):
  """The batcher holds `max_queue_rows` rows already; retry after a moment."""


class Batched(NamedTuple):
  outputs: dict[str, np.ndarray]  # exactly the caller's rows
  batch_rows: int  # the rows of the merged model call they ran in


@dataclasses.dataclass
class _Pending:
  inputs: dict[str, np.ndarray]
  rows: int
  future: asyncio.Future
  queued: float


class Batcher:
  """`await batcher.submit(inputs)` -> Batched(the outputs of `run(merged inputs)` for exactly these rows, the
  merged call's rows).

  `run(inputs: dict[str, array[N, ...]]) -> dict[str, array[N, ...]]` must keep rows in order.
  `on_batch(rows)` is told each merged batch's size (for metrics).
  """

  def __init__(self, run: Callable[[dict], dict], *, max_batch_size: int = 64, max_wait_ms: float = 2.0,
               max_queue_rows: int = 4096, on_batch: Callable[[int], None] | None = None):
    self.run, self.max_batch_size, self.max_wait = run, max_batch_size, max_wait_ms / 1000
    self.max_queue_rows, self.on_batch = max_queue_rows, on_batch
    self._queue: list[_Pending] = []
    self._queued_rows = 0
    self._last_requests = 0  # in the last model call
    self._wake: asyncio.Event | None = None
    self._worker: asyncio.Task | None = None

  @property
  def queued_rows(self) -> int:
    return self._queued_rows

  async def submit(self, inputs: dict[str, np.ndarray], timeout: float | None = None) -> Batched:
    rows = len(next(iter(inputs.values())))
    if self._queued_rows + rows > self.max_queue_rows:
      raise QueueFull(f"{self._queued_rows} rows are queued (the limit is {self.max_queue_rows})")
    loop = asyncio.get_running_loop()
    if self._worker is None or self._worker.done():
      self._wake = asyncio.Event()
      self._worker = loop.create_task(self._work())
    pending = _Pending(inputs, rows, loop.create_future(), time.perf_counter())
    self._queue.append(pending)
    self._queued_rows += rows
    if len(self._queue) == 1 or self._queued_rows >= self.max_batch_size:  # the worker waits for nothing else
      self._wake.set()
    if timeout is None:
      return await pending.future
    # A timer, not asyncio.wait_for: that wraps every request in a task of its own (~7% of the server's CPU time).
    expiry = loop.call_later(timeout, _expire, pending.future)
    try:
      return await pending.future
    finally:
      expiry.cancel()

  def stop(self) -> None:
    """Ends the worker task (and with it the batcher's hold on `run`); a later submit starts a new one."""
    if self._worker is not None:
      self._worker.cancel()

  async def _work(self) -> None:
    while True:
      await self._wake.wait()
      self._wake.clear()
      while self._queue:
        # Waiting pays only when requests come concurrently: after a model call of one request, run at once.
        deadline = self._queue[0].queued + (self.max_wait if self._last_requests > 1 else 0)
        while self._queued_rows < self.max_batch_size and time.perf_counter() < deadline:
          self._wake.clear()
          try:
            await asyncio.wait_for(self._wake.wait(), max(deadline - time.perf_counter(), 0))
          except asyncio.TimeoutError:
            break
        batch = self._take()
        await self._run(batch)

  def _take(self) -> list[_Pending]:
    """The longest prefix of the queue that fits max_batch_size (at least one request)."""
    taken, rows = [], 0
    while self._queue and (not taken or rows + self._queue[0].rows <= self.max_batch_size):
      pending = self._queue.pop(0)
      taken.append(pending)
      rows += pending.rows
    self._queued_rows -= rows
    return taken

  async def _run(self, batch: list[_Pending]) -> None:
    merged = {k: np.concatenate([p.inputs[k] for p in batch]) if len(batch) > 1 else batch[0].inputs[k]
              for k in batch[0].inputs}
    try:
      outputs = await asyncio.get_running_loop().run_in_executor(None, self.run, merged)
    except Exception as e:  # noqa: BLE001  (every caller of the batch gets the error)
      for p in batch:
        if not p.future.done():
          p.future.set_exception(e)
      return
    rows, self._last_requests = sum(p.rows for p in batch), len(batch)
    if self.on_batch:
      self.on_batch(rows)
    start = 0
    for p in batch:
      if not p.future.done():
        p.future.set_result(Batched({k: v[start:start + p.rows] for k, v in outputs.items()}, rows))
      start += p.rows


def _expire(future: asyncio.Future) -> None:
  """Ends a request's wait; its rows are still computed if already taken, and their result is dropped."""
  if not future.done():
    future.set_exception(TimeoutError())
