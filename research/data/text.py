"""Text cleaning: whole-split cleaners (`config.data.clean`) and the same normalization as a per-batch op.

Cleaners run once per split at load time (research/data/clean.py), in the order
written, for example

    config.data.clean = "normalize_text|drop_empty|dedupe"

- `drop_empty(key="text")`: drops rows whose text is missing (None, NaN) or blank.
- `dedupe(key="text")`: keeps the first row of each distinct text (labels of later
  copies are dropped with them). Run it after `normalize_text` to also merge
  texts that differ only in case, unicode form or markup.
- `normalize_text(key="text", nfkc=True, lowercase=True, strip_markup=True)`:
  unicode NFKC, lowercase, HTML tags (`<br />`) replaced by spaces, entities
  (`&amp;`) decoded, runs of whitespace collapsed.

`normalize_text` is also a preprocessing op (`config.data.preprocess`,
research/data/ops.py) for pipelines that normalize per batch, e.g. on raw text
at serving time. Text columns are numpy object arrays of Python `str`.
"""

from __future__ import annotations

import html
import re
import unicodedata

import numpy as np

from research.data import sources
from research.registry import CLEANERS, OPS

Split = dict[str, np.ndarray]

# An HTML tag or comment: '<' then a letter or '/' (so "x < y" is prose), at most 200 characters.
_TAG = re.compile(r"<!--.*?-->|</?[A-Za-z][^<>]{0,200}>", re.DOTALL)
_SPACE = re.compile(r"\s+")


def normalize_one(text: str, nfkc: bool = True, lowercase: bool = True, strip_markup: bool = True) -> str:
  """One string: markup stripped, NFKC, lowercased, whitespace collapsed (each step optional)."""
  if strip_markup:
    text = html.unescape(_TAG.sub(" ", text))
  if nfkc:
    text = unicodedata.normalize("NFKC", text)
  if lowercase:
    text = text.lower()
  return _SPACE.sub(" ", text).strip()


def _is_missing(value) -> bool:
  if value is None:
    return True
  if isinstance(value, float):  # NaN, as pandas and Arrow write a missing string
    return value != value
  if isinstance(value, bytes):
    value = value.decode("utf-8", "replace")
  return not str(value).strip()


def _keep(arrays: Split, keep: np.ndarray) -> Split:
  return {k: v[keep] for k, v in arrays.items()}


def _column(arrays: Split, key: str) -> np.ndarray:
  if key not in arrays:
    raise KeyError(f"text cleaning: the split has no column {key!r}; it has {sorted(arrays)}.")
  return arrays[key]


@CLEANERS.register("drop_empty")
def drop_empty(arrays: Split, key: str = "text") -> Split:
  """Drops the rows whose `key` is missing (None / NaN) or only whitespace."""
  keep = np.array([not _is_missing(t) for t in _column(arrays, key)], dtype=bool)
  return _keep(arrays, keep)


@CLEANERS.register("dedupe")
def dedupe(arrays: Split, key: str = "text") -> Split:
  """Keeps only the first row of each distinct `key` value (order preserved)."""
  seen: set = set()
  keep = np.zeros(len(_column(arrays, key)), dtype=bool)
  for i, value in enumerate(arrays[key]):
    marker = value.tobytes() if isinstance(value, np.ndarray) else value
    if marker not in seen:
      seen.add(marker)
      keep[i] = True
  return _keep(arrays, keep)


def _normalize_column(column: np.ndarray, **options) -> np.ndarray:
  out = np.empty(len(column), dtype=object)
  for i, value in enumerate(column):
    out[i] = value if _is_missing(value) else normalize_one(str(value), **options)
  return out


@CLEANERS.register("normalize_text")
def normalize_text_split(arrays: Split, key: str = "text", nfkc: bool = True, lowercase: bool = True,
                         strip_markup: bool = True) -> Split:
  """Rewrites the `key` column with `normalize_one` (missing values are left for `drop_empty`)."""
  column = _normalize_column(_column(arrays, key), nfkc=nfkc, lowercase=lowercase, strip_markup=strip_markup)
  return {**arrays, key: column}


@OPS.register("normalize_text")
def normalize_text(batch: dict[str, np.ndarray], key: str = "text", nfkc: bool = True, lowercase: bool = True,
                   strip_markup: bool = True) -> dict[str, np.ndarray]:
  """Per-batch op: the same normalization as the `normalize_text` cleaner."""
  return normalize_text_split(batch, key, nfkc=nfkc, lowercase=lowercase, strip_markup=strip_markup)


def decode_utf8(data: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  """Concatenated UTF-8 bytes + N+1 offsets -> object array of N strings (how text splits are cached)."""
  raw = data.tobytes()
  out = np.empty(len(offsets) - 1, dtype=object)
  for i in range(len(out)):
    out[i] = raw[offsets[i]:offsets[i + 1]].decode("utf-8")
  return out


def encode_utf8(texts) -> tuple[np.ndarray, np.ndarray]:
  """Strings -> (uint8 concatenated UTF-8, int64 offsets[N+1]): a compact, pickle-free `.npz` layout."""
  encoded = [str(t).encode("utf-8") for t in texts]
  offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
  np.cumsum([len(b) for b in encoded], out=offsets[1:])
  return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


def load_text_split(name: str, split: str, loaders: list) -> Split:
  """`sources.load_cached` for text datasets.

  Each loader returns {"text": object array of str, "label": int32[N], ...}; the
  cache stores the text as UTF-8 bytes plus offsets (`text_utf8`, `text_offsets`),
  which numpy reads back without pickle, and this returns the text as an
  object array again.
  """
  def pack(loader):
    def load(s: str) -> Split:
      arrays = dict(loader(s))
      data, offsets = encode_utf8(arrays.pop("text"))
      return {**arrays, "text_utf8": data, "text_offsets": offsets}

    return load

  cached = sources.load_cached(name, split, [(label, pack(loader)) for label, loader in loaders])
  rest = {k: v for k, v in cached.items() if k not in ("text_utf8", "text_offsets")}
  return {"text": decode_utf8(cached["text_utf8"], cached["text_offsets"]), **rest}
