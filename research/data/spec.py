"""What a trained model needs to know of its dataset, recorded in the workdir: `WORKDIR/dataset.json`.

    {"name": "rotten_tomatoes", "clean": "normalize_text|drop_empty|dedupe", "splits": ["train", "test"],
     "label_names": ["negative", "positive"], "examples": {"train": 11617, "test": 1128},
     "columns": {"text": {"shape": [], "dtype": "str"}, "label": {"shape": [], "dtype": "int32", "range": [0, 1]}}}

The training loop writes it at start. With it (and the fitted preprocessing the
workdir already holds: tokenizer, statistics), a run's model is rebuilt,
evaluated on synthetic inputs and exported without its dataset: the model is
sized by `synthetic(columns)` examples run through the preprocessing, where it
used to be sized by real training examples. A dataset module declares its
splits (`SPLITS` or `NUM_EXAMPLES`) and class names (`LABEL_NAMES`).
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path

import numpy as np

from research import atomic
from research.registry import DATASETS

FILE = "dataset.json"


def _module(dataset: str):
  return sys.modules.get(DATASETS.get(dataset).__module__) if dataset in DATASETS else None


def splits(dataset: str) -> list[str]:
  """The splits a registered dataset has (its module's SPLITS or NUM_EXAMPLES; else train and test)."""
  module = _module(dataset)
  found = getattr(module, "SPLITS", None) or getattr(module, "NUM_EXAMPLES", None) or ("train", "test")
  return list(found)


def label_names(dataset: str) -> list[str] | None:
  """The class names of a registered dataset, index by index (its module's LABEL_NAMES), or None."""
  names = getattr(_module(dataset), "LABEL_NAMES", None)
  return None if names is None else [str(n) for n in names]


def columns(arrays: dict[str, np.ndarray]) -> dict[str, dict]:
  """Each column's per-example shape and dtype ("str" for text), and an integer column's [min, max]."""
  described = {}
  for key, values in arrays.items():
    if hasattr(values, "column_spec"):  # a streamed column: reading it whole for its range would read the corpus
      described[key] = values.column_spec()
      continue
    values = np.asarray(values)
    entry = {"shape": list(values.shape[1:]), "dtype": str(values.dtype)}
    if values.dtype == object or values.dtype.kind == "U":
      entry["dtype"] = "str"
    elif values.dtype.kind in "iu" and values.size:
      entry["range"] = [int(values.min()), int(values.max())]
    described[key] = entry
  return described


def describe(config, train: dict[str, np.ndarray], sizes: dict[str, int]) -> dict:
  """The record of `config.data`'s dataset as training sees it (after cleaning)."""
  return {"name": config.data.name, "clean": config.data.clean, "splits": splits(config.data.name),
          "label_names": label_names(config.data.name), "examples": dict(sizes), "columns": columns(train)}


def write(workdir: str | Path, record: dict) -> None:
  atomic.write_text(Path(workdir) / FILE, json.dumps(record, indent=2) + "\n")


def read(workdir: str | Path) -> dict | None:
  """The workdir's record, or None for a workdir written before it existed."""
  path = Path(workdir) / FILE
  return json.loads(path.read_text()) if path.is_file() else None


def synthetic(columns: dict[str, dict], n: int, seed: int = 0) -> dict[str, np.ndarray]:
  """`n` made-up examples of the recorded columns: integers within their range, floats ~ N(0, 1), words."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for key, entry in columns.items():
    shape = (n, *entry["shape"])
    if entry["dtype"] == "str":
      letters = np.array(list(string.ascii_lowercase))
      words = lambda: " ".join("".join(rng.choice(letters, rng.integers(2, 8))) for _ in range(rng.integers(3, 12)))
      arrays[key] = np.array([words() for _ in range(int(np.prod(shape)))], dtype=object).reshape(shape)
    elif np.dtype(entry["dtype"]).kind in "iu":
      low, high = entry.get("range", [0, 1])
      arrays[key] = rng.integers(low, high + 1, shape).astype(entry["dtype"])
    elif np.dtype(entry["dtype"]).kind == "b":
      arrays[key] = rng.random(shape) < 0.5
    else:
      arrays[key] = rng.standard_normal(shape).astype(entry["dtype"])
  return arrays
