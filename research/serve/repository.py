"""The models a server holds: `DIR/<name>/<version>/` export directories, or single `NAME=EXPORT_DIR` exports.

Each version is verified (every sha256 against its manifest) and warmed up (one call through its batcher's
model) before it is served; one that fails to load is reported with its reason and not served. Versions are
whole numbers; requests without a version get the newest.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from research.errors import ConfigError
from research.serve.batcher import Batcher
from research.serve.generate import Generator
from research.serve.predictor import Predictor

log = logging.getLogger("research.serve")


@dataclasses.dataclass
class Version:
  name: str
  version: int
  predictor: Predictor
  batcher: Batcher
  generator: Generator | None = None  # a language model's export: its prefill and decode steps

  def run(self, raw: dict) -> dict[str, np.ndarray]:
    """Merged inputs (each request checked before batching) -> {"probabilities", "predictions"} (classifiers) or
    the model's named outputs."""
    result = self.predictor.predict(raw, checked=True)
    if "outputs" in result:
      return result["outputs"]
    return {"probabilities": result["probabilities"], "predictions": result["predictions"].astype(np.int64)}


@dataclasses.dataclass
class Repository:
  models: dict[str, dict[int, Version]] = dataclasses.field(default_factory=dict)
  failures: dict[str, str] = dataclasses.field(default_factory=dict)  # "name/version" -> why it is not served

  def get(self, name: str, version: int | None = None) -> Version:
    versions = self.models.get(name)
    if not versions:
      raise KeyError(f"no model {name!r}; served: {', '.join(sorted(self.models)) or 'none'}")
    if version is None:
      return versions[max(versions)]
    if version not in versions:
      raise KeyError(f"model {name!r} has no version {version}; served: {sorted(versions)}")
    return versions[version]

  def add(self, name: str, version: int, directory: Path, batching: dict) -> None:
    try:
      predictor = Predictor.load(directory)
      entry = Version(name, version, predictor, None)
      entry.batcher = Batcher(entry.run, **batching)
      entry.run(predictor.check(_warmup_inputs(predictor)))  # compiles and allocates before the first request
      if "generation" in predictor.manifest:
        entry.generator = Generator.load(directory)
    except Exception as e:  # noqa: BLE001  (a bad version is reported, the others are served)
      reason = " ".join(str(e).split())[:500]
      self.failures[f"{name}/{version}"] = reason
      log.error("model %s version %s not served: %s", name, version, reason)
      return
    self.models.setdefault(name, {})[version] = entry


def _warmup_inputs(predictor: Predictor) -> dict:
  inputs = {}
  for name, spec in predictor.signature.items():
    if spec["dtype"] == "str":
      inputs[name] = np.array(["warm up"], dtype=object)
    else:
      inputs[name] = np.zeros([1, *spec["shape"][1:]], spec["dtype"])
  return inputs


def load(models_dir: str | None, single: list[str], batching: dict) -> Repository:
  """Every DIR/<name>/<version>/ of `models_dir` and every NAME=EXPORT_DIR of `single` (as version 1)."""
  repo = Repository()
  found: list[tuple[str, int, Path]] = []
  if models_dir:
    root = Path(models_dir)
    if not root.is_dir():
      raise ConfigError(f"--models {models_dir} is not a directory; give a directory of <name>/<version>/ exports.")
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
      found += [(model_dir.name, int(v.name), v) for v in model_dir.iterdir() if v.is_dir() and v.name.isdigit()]
  for spec in single:
    name, sep, directory = spec.partition("=")
    if not sep or not name or not directory:
      raise ConfigError(f"--model {spec!r}: write it as NAME=EXPORT_DIR.")
    found.append((name, 1, Path(directory)))
  if not found:
    raise ConfigError("No models to serve: give --models DIR (holding <name>/<version>/ exports) or "
                      "--model NAME=EXPORT_DIR.")
  for name, version, directory in found:
    repo.add(name, version, directory, batching)
  if not repo.models:
    raise ConfigError(f"No model could be loaded: {'; '.join(f'{k}: {v}' for k, v in repo.failures.items())}")
  return repo
