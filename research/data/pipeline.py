"""The input pipeline: fixed-shape global batches, sharded over the mesh's data axis.

Batch `step` of a run is a pure function of (seed, step): epoch = step // steps_per_epoch
selects a permutation seeded by (seed, epoch), and the batch is the
`step % steps_per_epoch`-th slice of it. So a resumed run sees exactly the batches
it would have seen, and the order does not depend on the number of processes.
Each process builds only its own rows and assembles the global `jax.Array` with
`jax.make_array_from_process_local_data`, which is what multi-host needs. On a
single CPU device the batch stays a host array, which the jitted step copies in.

A streamed split (columns that read from disk when indexed, such as the windows of
`tokens:DIR`, research/data/token_windows.py) is never preprocessed up front, and
its permutation is computed only at the positions of each batch
(research/data/permutation.py): no process holds the split or its order, and
each reads only its own rows.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from typing import Callable, Iterator

import jax
import numpy as np

from research.data import permutation

Batch = dict[str, np.ndarray]
# A split whose preprocessed arrays fit in this many bytes is preprocessed once, up front, instead of batch by
# batch: host ops (tokenization above all) then cost nothing per step. Larger splits stay per batch.
PRECOMPUTE_BYTES = 1 << 30
# Batches built ahead on the prefetch thread. That thread shares the cores with XLA, so a batch takes 0.2-2 ms
# to build, and the train loop takes batches in bursts after each host sync: 2 ahead left mnist_mlp waiting
# ~4.5% of the time, 8 ahead ~0.5%. Capped in bytes for large batches.
PREFETCH_BATCHES, PREFETCH_BYTES = 8, 256 << 20


def precompute(arrays: Batch, preprocess: Callable[[Batch], Batch], *, budget: int = PRECOMPUTE_BYTES,
               chunk: int = 4096) -> Batch | None:
  """`preprocess` applied to the whole split in chunks, or None if the result would exceed `budget` bytes or
  its shapes depend on the chunk (an op that pads to the longest example of its batch)."""
  n = len(next(iter(arrays.values())))
  first = preprocess({k: v[:chunk] for k, v in arrays.items()})
  if sum(v.nbytes for v in first.values()) / min(chunk, n) * n > budget:
    return None
  # Each chunk is written into the result in place: concatenating the chunks at the end held the split twice.
  ready = {k: np.empty((n, *v.shape[1:]), v.dtype) for k, v in first.items()}
  for start in range(0, n, chunk):
    part = first if start == 0 else preprocess({k: v[start:start + chunk] for k, v in arrays.items()})
    if any(part[k].shape[1:] != ready[k].shape[1:] for k in ready):
      return None
    for k in ready:
      ready[k][start:start + chunk] = part[k]
  return ready


def in_memory(arrays: Batch) -> bool:
  """Whether every column is a numpy array in memory; a streamed column (research/data/token_windows.py) is not."""
  return all(isinstance(v, np.ndarray) for v in arrays.values())


def _identity(batch: Batch) -> Batch:
  return batch


def prepared(arrays: Batch, preprocess: Callable[[Batch], Batch],
             budget: int = PRECOMPUTE_BYTES) -> tuple[Batch, Callable[[Batch], Batch]]:
  """(arrays, preprocess) to draw batches from: the split preprocessed up front with nothing left to do per
  batch when `precompute` can, else the raw split and `preprocess` (always for a streamed split)."""
  ready = precompute(arrays, preprocess, budget=budget) if in_memory(arrays) else None
  return (ready, _identity) if ready is not None else (arrays, preprocess)


class Pipeline:
  """Global batches of one split, shuffled per epoch, preprocessed on the host."""

  def __init__(self, arrays: Batch, *, batch_size: int, sharding: jax.sharding.NamedSharding,
               preprocess: Callable[[Batch], Batch], seed: int, shuffle: bool = True,
               precompute_bytes: int = PRECOMPUTE_BYTES):
    self.num_examples = len(next(iter(arrays.values())))
    self.arrays, self.preprocess = prepared(arrays, preprocess, precompute_bytes)
    self.batch_size = batch_size
    self.sharding = sharding
    self.seed = seed
    self.shuffle = shuffle
    self.streamed = not in_memory(arrays)
    self.process_index, self.process_count = jax.process_index(), jax.process_count()
    if batch_size % self.process_count:
      raise ValueError(f"batch size {batch_size} is not divisible by the {self.process_count} processes.")
    self.local_size = batch_size // self.process_count
    self.steps_per_epoch = self.num_examples // batch_size  # Drop the remainder: fixed shapes.
    if self.steps_per_epoch == 0:
      raise ValueError(f"batch size {batch_size} is larger than the {self.num_examples} examples of the split.")

  def epoch_order(self, epoch: int) -> np.ndarray:
    if not self.shuffle:
      return np.arange(self.num_examples)
    return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

  def position(self, step: int) -> dict:
    """Where batch `step` comes from; stored in checkpoints."""
    return {"epoch": step // self.steps_per_epoch, "index": step % self.steps_per_epoch}

  def indices(self, step: int) -> np.ndarray:
    """The example indices of this process's rows of global batch `step`."""
    pos = self.position(step)
    start = pos["index"] * self.batch_size + self.process_index * self.local_size
    positions = np.arange(start, start + self.local_size)
    if not self.shuffle:
      return positions
    if self.streamed:  # a permutation array would cost 8 bytes per example
      return permutation.shuffled(positions, self.num_examples, (self.seed, pos["epoch"]))
    return self._order_cache(pos["epoch"])[positions]

  def _order_cache(self, epoch: int) -> np.ndarray:
    if getattr(self, "_cached_epoch", None) != epoch:
      self._cached_epoch, self._cached_order = epoch, self.epoch_order(epoch)
    return self._cached_order

  def host_batch(self, step: int) -> Batch:
    idx = np.sort(self.indices(step))  # Sorted gathers are faster; row order inside a batch is irrelevant.
    return self.preprocess({k: v[idx] for k, v in self.arrays.items()})

  def global_batch(self, step: int) -> dict[str, jax.Array]:
    return to_global(self.host_batch(step), self.sharding)

  def iterate(self, start_step: int, num_steps: int, prefetch: int | None = None) -> Iterator[dict[str, jax.Array]]:
    """Batches start_step .. start_step+num_steps-1, built `prefetch` (default: `prefetch_depth()`) ahead on a
    background thread."""
    depth = self.prefetch_depth() if prefetch is None else prefetch
    return prefetch_iter((self.global_batch(s) for s in range(start_step, start_step + num_steps)), depth)

  def prefetch_depth(self) -> int:
    batch_bytes = self.local_size * sum(v[:1].nbytes for v in self.arrays.values())  # raw bytes if not precomputed
    return max(2, min(PREFETCH_BATCHES, PREFETCH_BYTES // max(batch_bytes, 1)))


def to_global(local: Batch, sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
  """Assembles this process's rows into global arrays sharded on the batch axis (on a single CPU device: the
  host arrays themselves)."""
  count = jax.process_count()
  if count == 1 and len(sharding.device_set) == 1:
    if next(iter(sharding.device_set)).platform == "cpu":
      # XLA:CPU's device memory is host memory: the jitted step copies the rows in as it takes them (its C++
      # argument path), as a hand-written loop does. A transfer here first cost a second copy and a dispatch:
      # the trainer ran 0.965x -> 0.985x of the hand-written loop on the benchmark MLP without it.
      return local
    return _put_on_one_device(sharding)(local)
  if count == 1:
    return jax.device_put(local, sharding)  # ~2x faster than the general path below
  return {k: jax.make_array_from_process_local_data(sharding, v, (v.shape[0] * count,) + v.shape[1:])
          for k, v in local.items()}


@functools.lru_cache(maxsize=None)
def _put_on_one_device(sharding: jax.sharding.NamedSharding) -> Callable[[Batch], dict[str, jax.Array]]:
  """A jitted identity: jit's C++ argument path copies numpy to the device in ~30-60 us a batch, where
  `jax.device_put`'s Python layers take ~250 us (a fifth of a small model's step). With several devices the
  identity runs once per device and device_put is faster."""
  return jax.jit(lambda batch: batch, in_shardings=sharding, out_shardings=sharding)


def eval_batches(arrays: Batch, batch_size: int, sharding: jax.sharding.NamedSharding,
                 preprocess: Callable[[Batch], Batch]) -> Iterator[dict[str, jax.Array]]:
  """The whole split in order, in fixed-shape batches; the last is padded and `mask` marks real rows."""
  n = len(next(iter(arrays.values())))
  local = batch_size // jax.process_count()
  offset = jax.process_index() * local

  def make(start: int) -> dict[str, jax.Array]:
    rows = np.arange(start + offset, start + offset + local)
    mask = rows < n
    batch = preprocess({k: v[np.minimum(rows, n - 1)] for k, v in arrays.items()})
    return to_global({**batch, "mask": mask.astype(np.float32)}, sharding)

  return prefetch_iter((make(s) for s in range(0, n, batch_size)), 2)


class WaitTimer:
  """Wraps a batch iterator; `seconds` adds up the time the consumer spent waiting for its items.

  The train loop reports it as `perf/data_wait_fraction`: the share of wall time
  the step loop stood idle because the next batch was not ready.
  """

  def __init__(self, source: Iterator):
    self.source, self.seconds = source, 0.0

  def __iter__(self):
    return self

  def __next__(self):
    start = time.perf_counter()
    try:
      return next(self.source)
    finally:
      self.seconds += time.perf_counter() - start

  def close(self) -> None:
    close = getattr(self.source, "close", None)
    if close is not None:
      close()


_DONE = object()


def prefetch_iter(source: Iterator, size: int) -> Iterator:
  """Runs `source` on a daemon thread, `size` items ahead; re-raises its errors in the consumer.

  Close the returned generator (`contextlib.closing`) when leaving it early: a
  thread still inside JAX when the interpreter exits aborts the process.
  """
  if size <= 0:
    yield from source
    return
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def produce():
    try:
      for item in source:
        while not stop.is_set():
          try:
            items.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      items.put(_DONE)
    except BaseException as e:  # Handed to the consumer, which raises it.
      items.put(e)

  thread = threading.Thread(target=produce, daemon=True, name="prefetch")
  thread.start()
  try:
    while True:
      item = items.get()
      if item is _DONE:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:  # Closed early (an error, a preemption): stop the producer before the interpreter exits.
    stop.set()
    thread.join(timeout=30)
