"""The dynamic batcher on its own (research/serve/batcher.py): merged calls, each caller's own rows, timeouts, and a
full queue, with a model that records what it was called with."""

import asyncio
import threading

import numpy as np
import pytest

from research.serve.batcher import Batcher, QueueFull


class Recorder:
  """A model that doubles its input and records each call's rows; `gate` holds a call until the test opens it."""

  def __init__(self):
    self.calls: list[int] = []
    self.gate = threading.Event()
    self.gate.set()

  def __call__(self, inputs):
    self.gate.wait(10)
    self.calls.append(len(inputs["x"]))
    return {"y": inputs["x"] * 2}


def _rows(start, n):
  return {"x": np.arange(start, start + n, dtype=np.float32)[:, None]}


def test_concurrent_requests_share_one_call_and_each_gets_its_own_rows():
  model = Recorder()

  async def main():
    batcher = Batcher(model, max_batch_size=64, max_wait_ms=50)
    results = await asyncio.gather(*(batcher.submit(_rows(10 * i, i + 1)) for i in range(5)))
    batcher.stop()
    return results

  results = asyncio.run(main())
  assert sum(model.calls) == 15 and len(model.calls) < 5  # merged (the first may run alone)
  for i, batched in enumerate(results):
    np.testing.assert_array_equal(batched.outputs["y"], _rows(10 * i, i + 1)["x"] * 2)


def test_a_request_that_waits_too_long_times_out_and_the_batcher_keeps_serving():
  model = Recorder()

  async def main():
    batcher = Batcher(model, max_batch_size=4, max_wait_ms=0)
    model.gate.clear()  # the model call hangs until the gate opens
    with pytest.raises(TimeoutError):
      await batcher.submit(_rows(0, 1), timeout=0.05)
    model.gate.set()
    later = await batcher.submit(_rows(5, 2), timeout=5)
    batcher.stop()
    return later

  later = asyncio.run(main())
  np.testing.assert_array_equal(later.outputs["y"], [[10.0], [12.0]])


def test_a_full_queue_refuses_at_once():
  model = Recorder()

  async def main():
    batcher = Batcher(model, max_batch_size=2, max_wait_ms=0, max_queue_rows=3)
    model.gate.clear()
    first = asyncio.ensure_future(batcher.submit(_rows(0, 2)))
    await asyncio.sleep(0.05)  # the first call has started (and hangs); the queue is empty again
    queued = asyncio.ensure_future(batcher.submit(_rows(2, 3)))
    await asyncio.sleep(0)
    with pytest.raises(QueueFull, match="3 rows are queued"):
      await batcher.submit(_rows(5, 1))
    model.gate.set()
    results = await asyncio.gather(first, queued)
    batcher.stop()
    return results

  first, queued = asyncio.run(main())
  np.testing.assert_array_equal(queued.outputs["y"][:, 0], [4.0, 6.0, 8.0])  # 3 rows > max_batch_size: alone
  assert first.batch_rows == 2 and queued.batch_rows == 3
