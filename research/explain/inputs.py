"""What to explain, in the form a run's model saw in training.

Inputs come raw, as the dataset holds them: image files or .npy arrays for an image model, texts
(or .txt files of one text per line) for a text model, read against the raw columns WORKDIR/dataset.json
records (research/serve/inputs.py reads and checks them, as for a served model). Or they are the test
split's first misclassified examples. `cleaning` rewrites examples as training's cleaning did (e.g.
normalize_text); then the run's preprocessing ops apply (research/train/experiment.py preprocessor).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np

from research.data import spec as data_spec
from research.errors import ConfigError, InputError
from research.registry import OPS
from research.train import experiment

CHUNK = 1000  # test examples predicted per call while looking for misclassified ones


@dataclasses.dataclass
class Examples:
  names: list[str]  # one per example: a file name, "text 1", or "test 123" (its index in the test split)
  raw: dict[str, np.ndarray]  # the raw input columns, e.g. {"image": uint8[N, 28, 28, 1]} or {"text": object[N]}
  labels: np.ndarray | None  # the true classes where known (the test split), else None


def raw_signature(config, workdir: str | Path) -> dict[str, dict]:
  """The run's raw inputs, e.g. {"image": {"shape": [None, 28, 28, 1], "dtype": "uint8"}}: WORKDIR/dataset.json's
  columns other than the label."""
  record = data_spec.read(workdir)
  if record is None:
    raise ConfigError(f"{workdir}/{data_spec.FILE} is missing: it is written when training starts; retrain the run "
                      f"with this version to explain it.")
  return {k: {"shape": [None, *c["shape"]], "dtype": c["dtype"]} for k, c in record["columns"].items()
          if k != config.data.label_key}


def from_arguments(config, workdir: str | Path, arguments: list[str]) -> Examples:
  """Examples from the command line's inputs (files or texts), checked against the raw signature."""
  from research.serve import inputs as serve_inputs

  try:
    names, raw = serve_inputs.read(raw_signature(config, workdir), arguments)
  except InputError as e:
    raise ConfigError(str(e)) from None
  return Examples(names, raw, None)


def cleaning(config) -> Callable[[dict], dict]:
  """The cleaning steps of the run that rewrite each example (e.g. normalize_text; the others drop rows of whole
  splits), as one function of a raw batch: given inputs are then read as training read its data."""
  from research.data import clean

  texts = list(filter(None, (part.strip() for part in config.data.clean.split("|"))))
  names = [text.split("(")[0].strip() for text in texts]
  rewrites = [(OPS.get(name), args, kwargs) for name, (_, args, kwargs) in zip(names, clean.parse(config.data.clean))
              if name in OPS]

  def apply(batch: dict) -> dict:
    for fn, args, kwargs in rewrites:
      batch = fn(batch, *args, **kwargs)
    return batch

  return apply


def misclassified(config, predict: Callable[[dict], np.ndarray], count: int, log=print) -> Examples:
  """The first `count` examples of the test split whose predicted class (`predict`: a raw batch -> int[N]) is not
  their label, with their indices in the split as names."""
  test = experiment.test_split(config, log)
  if test is None:
    raise ConfigError(f"--misclassified needs the test split of {config.data.name!r}, which cannot be loaded here; "
                      f"give --inputs instead.")
  label_key = config.data.label_key
  if label_key not in test:
    raise ConfigError(f"the test split of {config.data.name!r} has no labels ({label_key!r}): nothing can be "
                      f"misclassified; give --inputs instead.")
  raw_keys = [k for k in test if k != label_key]
  size, found = len(test[label_key]), []
  for start in range(0, size, CHUNK):
    batch = {k: test[k][start:start + CHUNK] for k in raw_keys}
    wrong = np.flatnonzero(predict(batch) != test[label_key][start:start + CHUNK])
    found += [start + int(i) for i in wrong]
    if len(found) >= count:
      break
  found = found[:count]
  log(f"the first {len(found)} misclassified examples of the test split ({size:,} examples)")
  if not found:
    raise ConfigError(f"the model classifies every example of the test split of {config.data.name!r} correctly; "
                      f"give --inputs instead.")
  return Examples([f"test {i}" for i in found], {k: test[k][found] for k in raw_keys}, test[label_key][found])
