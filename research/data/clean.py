"""Dataset cleaning, applied to whole splits once at load time (not per batch).

`config.data.clean = "drop_empty(key='text')|dedupe(key='text')"` runs each
cleaner in turn on a split (a dict of numpy arrays with equal first dimension).
Cleaners may drop rows or rewrite columns; they are registered in
`research.registry.CLEANERS` and called as `cleaner(arrays, *args, **kwargs)`.
"""

from __future__ import annotations

import numpy as np

from research.data.ops import parse_op
from research.registry import CLEANERS

Split = dict[str, np.ndarray]


def parse(spec: str) -> list[tuple]:
  steps = [parse_op(text) for text in filter(None, (part.strip() for part in spec.split("|")))]
  return [(CLEANERS.get(name), args, kwargs) for name, args, kwargs in steps]


def apply(spec: str, arrays: Split) -> Split:
  for fn, args, kwargs in parse(spec):
    arrays = fn(arrays, *args, **kwargs)
  return arrays
