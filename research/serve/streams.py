"""Concurrent generation streams sharing one batched decode step over one KV cache (continuous batching).

    scheduler = Scheduler(generator, max_streams=16)
    stream = scheduler.open(prompt, max_tokens, temperature=0.8, top_k=40, seed=0)  # StreamsFull when full
    async for piece in stream: ...                # the text as it is decoded
    stream.close()                                # leaves the batch at the next step (a client that went away)

Each step: the streams that arrived are prefilled one by one (a batch of one, as `Generator.generate` does) and
take a free row of the cache; every row draws its next token with its own seed, temperature and top_k
(research.models.gpt.sample_rows); a row whose window is full slides alone (prefilled again, as
`sliding_generate` does); all the other rows advance together in one decode call, each at its own position.
The cache has a power-of-two number of rows, or max_streams at the most (each size compiled by `warm_up`);
finished and closed streams leave at the next step. A stream alone gets exactly `Generator.generate`'s tokens
for the same seed. Rows that share a step can round their logits differently in the last bit (~1e-7), which
changes a token only where two candidates are that close.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import AsyncIterator, Callable

import jax
import numpy as np

from research.serve.generate import Generator, encode, text_decoder

log = logging.getLogger("research.serve")
_END = object()  # a stream's queue ends with this


def _ignore(_: int) -> None:
  pass


class StreamsFull(RuntimeError):
  """`max_streams` streams are generating already; retry after a moment."""


@dataclasses.dataclass(eq=False)
class Stream:
  """One request's generation: its settings, its tokens so far, its row of the cache and its queue of text."""
  history: list[int]  # the prompt's tokens, then every token drawn
  max_tokens: int
  key_data: np.ndarray  # uint32[2]: jax.random.key_data(jax.random.key(seed))
  temperature: float
  top_k: int
  queue: asyncio.Queue = dataclasses.field(default_factory=asyncio.Queue)
  drawn: int = 0
  position: int = 0  # where the next decoded token goes in this row's window
  slot: int = -1  # this stream's row of the cache
  last: np.ndarray | None = None  # float32[vocab]: the logits the next token is drawn from
  closed: bool = False
  _decoder: object = dataclasses.field(default_factory=text_decoder)
  _on_close: Callable[[Stream], None] | None = None

  @property
  def finished(self) -> bool:
    return self.closed or self.drawn == self.max_tokens

  def close(self) -> None:
    if not self.closed:
      self.closed = True
      if self._on_close:
        self._on_close(self)

  def __aiter__(self) -> AsyncIterator[str]:
    return self._pieces()

  async def _pieces(self) -> AsyncIterator[str]:
    while True:
      piece = await self.queue.get()
      if piece is _END:
        return
      if isinstance(piece, BaseException):
        raise piece
      yield piece

  def _deliver(self, token: int) -> None:
    """Called on the event loop: the token's text (if a character is whole) and, after the last, the end."""
    piece = self._decoder.decode(bytes([token]), final=self.drawn == self.max_tokens)
    if piece:
      self.queue.put_nowait(piece)
    if self.drawn == self.max_tokens:
      self.queue.put_nowait(_END)
      self.close()


class Scheduler:
  """The streams of one exported language model. For metrics: `on_step(rows)` is told the rows of each decode
  call, `on_tokens(n)` the tokens each step drew, `on_streams(n)` the open streams whenever they change."""

  def __init__(self, generator: Generator, max_streams: int, *, on_step: Callable[[int], None] = _ignore,
               on_tokens: Callable[[int], None] = _ignore, on_streams: Callable[[int], None] = _ignore):
    if max_streams < 1:
      raise ValueError(f"max_streams must be >= 1, got {max_streams}.")
    self.generator, self.max_streams = generator, max_streams
    self.on_step, self.on_tokens, self.on_streams = on_step, on_tokens, on_streams
    self.block_size = generator.block_size
    self.open_streams = 0  # opened and neither finished nor closed: what max_streams limits
    self._waiting: list[Stream] = []  # opened, not yet prefilled
    self._active: list[Stream] = []  # holding rows of the cache
    self._k = self._v = None  # float32[layers, rows, block_size, heads, head_dim]
    self._task: asyncio.Task | None = None

  @property
  def rows(self) -> int:
    return 0 if self._k is None else self._k.shape[1]

  def sizes(self) -> list[int]:
    """The batch sizes a step can have: powers of two below max_streams, and max_streams."""
    return sorted({min(1 << i, self.max_streams) for i in range(self.max_streams.bit_length() + 1)})

  def warm_up(self) -> None:
    """Compiles the prefill, and each batch size's decode and draw, before the first request: a step that reached
    a new size would otherwise hold every stream while it compiles (seconds)."""
    from research.models.gpt import prefill_context, sample_rows

    _, k, _ = prefill_context(self.generator.prefill, np.zeros((1, 1), np.int32), self.block_size)
    for rows in self.sizes():  # the arguments as a step passes them (a cache on the device, the others numpy)
      cache = _put(_zeros((k.shape[0], rows, *k.shape[2:])), k, 0)
      zeros = np.zeros(rows, np.int32)
      logits, _, _ = self.generator.decode(cache, cache, zeros, zeros)
      sample_rows(np.asarray(logits), np.zeros((rows, 2), np.uint32), zeros, zeros.astype(np.float32), zeros)

  def open(self, prompt: str, max_tokens: int, *, temperature: float, top_k: int, seed: int) -> Stream:
    """A stream of `prompt`'s continuation (checked by the caller); StreamsFull if max_streams are open."""
    if self.open_streams >= self.max_streams:
      raise StreamsFull(f"{self.open_streams} streams are generating (the limit is {self.max_streams})")
    stream = Stream(encode(prompt).tolist(), max_tokens, np.asarray(jax.random.key_data(jax.random.key(seed))),
                    float(temperature), int(top_k), _on_close=self._closed)
    self.open_streams += 1
    self.on_streams(self.open_streams)
    self._waiting.append(stream)
    if self._task is None or self._task.done():
      self._task = asyncio.get_running_loop().create_task(self._run())
    return stream

  def _closed(self, stream: Stream) -> None:
    self.open_streams -= 1
    self.on_streams(self.open_streams)

  async def _run(self) -> None:
    """Steps while any stream is open; each step runs in a worker thread so the event loop keeps serving."""
    loop, admitted = asyncio.get_running_loop(), []
    try:
      while True:
        self._active = [s for s in self._active if not s.finished]
        admitted, self._waiting = [s for s in self._waiting if not s.closed], []
        if not self._active and not admitted:
          self._k = self._v = None  # the cache's memory goes back until the next stream
          return
        drawn = await loop.run_in_executor(None, self._step, admitted)
        self.on_tokens(len(drawn))
        for stream, token in drawn:
          if not stream.closed:
            stream._deliver(token)
    except Exception as e:  # every open stream is told; the next request starts afresh
      log.exception("generation failed")
      for stream in {*self._active, *admitted, *self._waiting}:
        stream.queue.put_nowait(RuntimeError(f"generation failed: {type(e).__name__}"))
        stream.close()
      self._active, self._waiting, self._k, self._v = [], [], None, None

  def _step(self, admitted: list[Stream]) -> list[tuple[Stream, int]]:
    """Admit, draw one token for every row, and move each row on (decode together, or slide alone)."""
    from research.models.gpt import sample_rows, slid

    self._fit(len(self._active) + len(admitted))
    free = sorted(set(range(self.rows)) - {s.slot for s in self._active})
    for stream, slot in zip(admitted, free):
      stream.slot = slot
      self._prefill(stream, stream.history[-self.block_size:])
    self._active += admitted
    rows = self.rows
    logits = np.zeros((rows, self._active[0].last.shape[-1]), np.float32)
    key_data = np.zeros((rows, 2), np.uint32)
    steps, top_k, temperature = np.zeros(rows, np.int32), np.zeros(rows, np.int32), np.zeros(rows, np.float32)
    for s in self._active:
      logits[s.slot], key_data[s.slot], steps[s.slot] = s.last, s.key_data, s.drawn
      temperature[s.slot], top_k[s.slot] = s.temperature, s.top_k
    tokens = np.asarray(sample_rows(logits, key_data, steps, temperature, top_k))
    for s in self._active:
      s.history.append(int(tokens[s.slot]))
      s.drawn += 1
    going = [s for s in self._active if s.drawn < s.max_tokens]
    decoding = [s for s in going if s.position < self.block_size]
    if decoding:
      index = np.zeros(rows, np.int32)
      for s in decoding:
        index[s.slot] = s.position
      last, self._k, self._v = self.generator.decode(self._k, self._v, tokens, index)
      last = np.asarray(last)
      for s in decoding:
        s.last, s.position = last[s.slot], s.position + 1
      self.on_step(len(decoding))
    for s in going:
      if s not in decoding:  # the window is full: slide it, as sliding_generate does
        self._prefill(s, slid(np.asarray(s.history), self.block_size))
    return [(s, int(tokens[s.slot])) for s in self._active]

  def _prefill(self, stream: Stream, context) -> None:
    from research.models.gpt import prefill_context

    last, k, v = prefill_context(self.generator.prefill, np.asarray(context, np.int32)[None], self.block_size)
    self._k, self._v = _put(self._k, k, stream.slot), _put(self._v, v, stream.slot)
    stream.last, stream.position = np.asarray(last)[0], len(context)

  def _fit(self, streams: int) -> None:
    """A cache of the smallest power of two rows (at most max_streams) that holds `streams`, the active rows
    moved to its first rows when its size changes."""
    rows = next(size for size in self.sizes() if size >= streams)
    if rows == self.rows:
      return
    if self._k is None:
      layers, _, block, heads, dim = jax.eval_shape(self.generator.prefill, np.zeros((1, self.block_size),
                                                                                    np.int32))[1].shape
      self._k = self._v = _zeros((layers, rows, block, heads, dim))
      return
    order = np.array([s.slot for s in self._active] + [0] * (rows - len(self._active)), np.int32)
    self._k, self._v = _take(self._k, order), _take(self._v, order)
    for i, s in enumerate(self._active):
      s.slot = i


def _zeros(shape: tuple[int, ...]) -> jax.Array:
  """A cache of zeros placed on the device as decode's outputs are, so that the calls compiled by `warm_up` are
  the ones a step makes (jit compiles again for an argument placed otherwise)."""
  return jax.device_put(np.zeros(shape, np.float32), jax.devices()[0])


@jax.jit
def _take(cache, rows):
  """cache float[layers, rows, ...] with its rows in the order `rows`."""
  return cache[:, rows]


@jax.jit
def _put(cache, row, slot):
  """cache float[layers, rows, ...] with row float[layers, 1, ...] written at `slot`."""
  return jax.lax.dynamic_update_slice_in_dim(cache, row, slot, axis=1)
