"""Token shards on disk: a corpus tokenized once (scripts/prepare_data.py), read back window by window.

A shard directory::

    DIR/index.json          {"format": "research.token_shards", "version": 1, "dtype": "uint16", "window": 257,
                             "tokenizer": {"kind": "char", "vocab_size": 70, "file": "tokenizer.json", "sha256": ..},
                             "splits": {"train": {"tokens": N, "shards": [{"file": "train-00000.bin",
                                                                           "tokens": n, "sha256": ..}, ...]},
                                        "test": {...}}}
    DIR/train-00000.bin     the token ids, raw little-endian `dtype`, one stream split across files
    DIR/tokenizer.json      the fitted tokenizer (kinds other than `byte`)

Shards are written to a temporary name and renamed when complete, and the index
is written last: a directory with an index holds every shard it names. Opening
checks each shard's size against the index (a truncated or missing shard is one
error naming it); `verify` also recomputes every sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from research import atomic
from research.errors import DataUnavailableError

FORMAT, VERSION = "research.token_shards", 1
INDEX = "index.json"
SPLITS = ("train", "test")


def dtype_for(vocab_size: int) -> np.dtype:
  """The narrowest unsigned integer that holds every id below `vocab_size`."""
  for dtype in (np.uint8, np.uint16, np.uint32):
    if vocab_size <= np.iinfo(dtype).max + 1:
      return np.dtype(dtype)
  raise ValueError(f"a vocabulary of {vocab_size} ids does not fit in 32 bits.")


class SplitWriter:
  """Appends token ids to the shards of one split, `shard_tokens` ids per file, hashing as it writes: memory stays
  bounded by what one `add` is given."""

  def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int):
    self.directory, self.split, self.dtype, self.shard_tokens = Path(directory), split, np.dtype(dtype), shard_tokens
    self.shards: list[dict] = []
    self._file = self._tmp = self._hash = None
    self._count = 0

  def add(self, ids: np.ndarray) -> None:
    ids = np.asarray(ids).astype(self.dtype.newbyteorder("<"), copy=False)
    while len(ids):
      if self._file is None:
        self._open()
      take = ids[:self.shard_tokens - self._count]
      data = take.tobytes()
      self._file.write(data)
      self._hash.update(data)
      self._count += len(take)
      ids = ids[len(take):]
      if self._count == self.shard_tokens:
        self._close_shard()

  def close(self) -> dict:
    """Finishes the last shard; returns the split's index entry."""
    if self._file is not None:
      self._close_shard()
    return {"tokens": sum(s["tokens"] for s in self.shards), "shards": self.shards}

  def _open(self) -> None:
    name = f"{self.split}-{len(self.shards):05d}.bin"
    self._tmp = self.directory / f".{name}.tmp"
    self._file = open(self._tmp, "wb")  # noqa: SIM115  (open across add() calls, until the shard is full)
    self._hash, self._count = hashlib.sha256(), 0

  def _close_shard(self) -> None:
    self._file.close()
    name = self._tmp.name[1:-len(".tmp")]
    os.replace(self._tmp, self.directory / name)
    self.shards.append({"file": name, "tokens": self._count, "sha256": self._hash.hexdigest()})
    self._file = None


def write_index(directory: Path, index: dict) -> None:
  atomic.write_text(Path(directory) / INDEX, json.dumps({"format": FORMAT, "version": VERSION, **index}, indent=2)
                    + "\n")


def _prepare_hint(directory: Path) -> str:
  return f"create it with: python scripts/prepare_data.py --input TEXT_FILE_OR_DIR --output {directory}"


def read_index(directory: str | Path) -> dict:
  """The index of a shard directory, or a one-line DataUnavailableError naming what is wrong and the fix."""
  directory = Path(directory)
  path = directory / INDEX
  if not directory.is_dir():
    raise DataUnavailableError(f"The token shard directory {directory} does not exist; {_prepare_hint(directory)}")
  if not path.is_file():
    raise DataUnavailableError(f"{directory} holds no {INDEX}, so it is not a finished token shard directory; "
                               f"{_prepare_hint(directory)}")
  try:
    index = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise DataUnavailableError(f"{path} cannot be read ({e.__class__.__name__}: {e}); {_prepare_hint(directory)}") \
        from None
  if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("version") != VERSION:
    raise DataUnavailableError(f"{path} is not a version-{VERSION} token shard index; {_prepare_hint(directory)}")
  return index


def shard_paths(directory: str | Path, index: dict, split: str) -> list[tuple[Path, int]]:
  """(path, tokens) of each shard of `split`, after checking that every file exists with the size the index says."""
  directory = Path(directory)
  if split not in index["splits"]:
    raise DataUnavailableError(f"{directory} has splits {sorted(index['splits'])}, not {split!r}.")
  itemsize, found = np.dtype(index["dtype"]).itemsize, []
  for shard in index["splits"][split]["shards"]:
    path, expected = directory / shard["file"], shard["tokens"] * itemsize
    if not path.is_file():
      raise DataUnavailableError(f"The token shard {path} is missing; copy the whole directory again, or rerun "
                                 f"scripts/prepare_data.py.")
    if path.stat().st_size != expected:
      raise DataUnavailableError(f"The token shard {path} has {path.stat().st_size} bytes where {INDEX} says "
                                 f"{expected}: it is truncated or corrupt; copy the whole directory again, or rerun "
                                 f"scripts/prepare_data.py.")
    found.append((path, shard["tokens"]))
  return found


def verify(directory: str | Path) -> dict:
  """Recomputes the sha256 of every shard (and of the tokenizer file); returns the index, or raises naming the first
  file that differs."""
  directory = Path(directory)
  index = read_index(directory)
  files = [(directory / s["file"], s["sha256"]) for split in index["splits"] for s in index["splits"][split]["shards"]]
  for split in index["splits"]:
    shard_paths(directory, index, split)
  if index["tokenizer"].get("file"):
    files.append((directory / index["tokenizer"]["file"], index["tokenizer"]["sha256"]))
  for path, expected in files:
    if not path.is_file() or file_sha256(path) != expected:
      raise DataUnavailableError(f"{path} does not match the sha256 in {directory / INDEX}: it is missing or was "
                                 f"changed; copy the whole directory again, or rerun scripts/prepare_data.py.")
  return index


def file_sha256(path: Path, chunk: int = 8 << 20) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      digest.update(block)
  return digest.hexdigest()
