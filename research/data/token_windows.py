"""The dataset `tokens:DIR`: windows of a tokenized corpus, streamed from its shards (research/data/token_shards.py).

    config.data.name = "tokens:data/shakespeare_tokens"     # a directory written by scripts/prepare_data.py

Each split is `{"tokens": TokenWindows}`: int[N, window] windows of the split's
token stream, starting every `window - 1` tokens (consecutive windows share one
token, so each token is a prediction target once per epoch; windows do not
cross shard boundaries). A `TokenWindows` behaves like the numpy array it
stands for where the pipeline touches it (`len`, `shape`, `dtype`, indexing by
int, slice or index array), but holds no tokens: indexing reads exactly the
requested windows with `os.preadv`, so a process's memory holds the rows it
asked for and nothing else. The pipeline asks each process for its own rows of
each global batch only (research/data/pipeline.py), so no process reads another
process's rows, and none reads the whole split.

Why reads by offset and not `np.memmap`: a memory map's touched pages count in
the process's resident memory until the kernel reclaims them, so RSS creeps up
towards the corpus size as an epoch goes on (nanoGPT recreates its memmap every
batch for this reason). A read by offset leaves the pages in the kernel's page
cache, shared by every process of the host, and the process's own memory flat.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from research.data import token_shards
from research.errors import ConfigError, DataUnavailableError
from research.registry import DATASETS

SPLITS = token_shards.SPLITS  # (read by research/data/spec.py)


class TokenWindows:
  """Windows of `window` tokens of the shards `(path, tokens)`, read from disk when indexed."""

  ndim = 2

  def __init__(self, shards: list[tuple[Path, int]], dtype: str, window: int, vocab_size: int, source: str = ""):
    self.paths = [path for path, _ in shards]
    self.dtype = np.dtype(dtype).newbyteorder("<")
    self.window, self.stride, self.vocab_size, self.source = window, window - 1, vocab_size, source
    counts = [max(0, (tokens - window) // self.stride + 1) for _, tokens in shards]
    self._first = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])  # index of each shard's first window
    self.shape = (int(self._first[-1]), window)
    self.bytes_read = 0  # what reading cost: tests check that a process reads only its own rows

  def __len__(self) -> int:
    return self.shape[0]

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, (int, np.integer)):
      return self[np.array([key])][0]
    if isinstance(key, slice):
      return self._read(np.arange(*key.indices(len(self)), dtype=np.int64))
    rows = np.asarray(key, dtype=np.int64)
    if rows.ndim != 1:
      raise IndexError(f"TokenWindows takes an int, a slice or a 1-d index array, not shape {rows.shape}")
    return self._read(np.where(rows < 0, rows + len(self), rows))

  def _read(self, rows: np.ndarray) -> np.ndarray:
    if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
      raise IndexError(f"window index out of range for {len(self)} windows")
    out = np.empty((len(rows), self.window), self.dtype)
    shard = np.searchsorted(self._first, rows, side="right") - 1
    nbytes = self.window * self.dtype.itemsize
    for s in np.unique(shard):  # one open per shard touched, however many rows it serves
      fd = os.open(self.paths[s], os.O_RDONLY)
      try:
        for j in np.flatnonzero(shard == s):
          offset = int(rows[j] - self._first[s]) * self.stride * self.dtype.itemsize
          if os.preadv(fd, [out[j]], offset) != nbytes:
            raise DataUnavailableError(f"The token shard {self.paths[s]} ended early at byte {offset}: it changed "
                                       f"since it was opened; rerun scripts/prepare_data.py.")
      finally:
        os.close(fd)
    self.bytes_read += len(rows) * nbytes
    return out

  def column_spec(self) -> dict:
    """What research/data/spec.py records of the column, without reading the corpus to find its range."""
    return {"shape": [self.window], "dtype": self.dtype.name, "range": [0, self.vocab_size - 1]}


@DATASETS.register("tokens:")
def tokens(directory: str, split: str) -> dict[str, TokenWindows]:
  """`{"tokens": TokenWindows}` of split `train` or `test` of the shard directory `directory`."""
  index = token_shards.read_index(directory)
  windows = TokenWindows(token_shards.shard_paths(directory, index, split), index["dtype"], index["window"],
                         index["tokenizer"]["vocab_size"], source=str(directory))
  if not len(windows):
    raise DataUnavailableError(
        f"The {split} split of {directory} has no window of {index['window']} tokens in any shard "
        f"({index['splits'][split]['tokens']} tokens): prepare a longer text, a smaller --window or --test_fraction, "
        f"or larger --shard_tokens.")
  return {"tokens": windows}


def check_model(model_config, arrays: dict) -> None:
  """A model whose embedding has fewer rows than the shards have token ids would silently read out of range: a
  one-line ConfigError instead, naming both vocabularies and the fix."""
  vocab = getattr(model_config, "vocab_size", None) if "vocab_size" in model_config else None
  for column in arrays.values():
    if isinstance(column, TokenWindows) and vocab is not None and vocab < column.vocab_size:
      raise ConfigError(f"model.vocab_size={vocab} is smaller than the vocabulary of the token shards in "
                        f"{column.source} ({column.vocab_size} ids): set --config.model.vocab_size="
                        f"{column.vocab_size}, or prepare the shards with the tokenizer the model was built for.")
