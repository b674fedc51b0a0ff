"""The models a server holds: `DIR/<name>/<version>/` export directories, or single `NAME=EXPORT_DIR` exports.

Each version is verified (every sha256 against its manifest) and warmed up (one call per batch bucket, one
through the preprocessing) before it is served; one that fails is recorded with its reason (`failures`) and
not served, and the version serving before it goes on. Versions are whole numbers; the version policy picks
which ones on disk are served (`Policy`); requests without a version get the newest served.

`sync(name)` brings one model in line with its directory: it may run in a worker thread while requests are
served, because `models` and `failures` are replaced, never changed in place (a reader holds a consistent
snapshot) and a request holds its Version object: one in flight finishes on the version it started on. An
unloaded version's batcher stops once its last request has its answer. research/serve/watcher.py polls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from research.errors import ConfigError
from research.serve import watcher
from research.serve.batcher import Batched, Batcher
from research.serve.generate import Generator
from research.serve.predictor import Predictor

log = logging.getLogger("research.serve")


class ServedBatcher(Batcher):
  """A Batcher that counts the requests waiting on it, so that an unloaded version can stop its worker task
  (which holds the model) once the last of them has its answer."""

  def __init__(self, run, **batching):
    super().__init__(run, **batching)
    self.waiting, self.retired, self.loop = 0, False, None

  async def submit(self, inputs: dict[str, np.ndarray], timeout: float | None = None) -> Batched:
    self.loop = asyncio.get_running_loop()
    self.waiting += 1
    try:
      return await super().submit(inputs, timeout)
    finally:
      self.waiting -= 1
      if self.retired and not self.waiting:
        self.stop()

  def retire(self) -> None:
    """Stops the worker once no request waits (callable from any thread)."""
    if self.loop is not None and not self.loop.is_closed():
      self.loop.call_soon_threadsafe(self._retire)

  def _retire(self) -> None:
    self.retired = True
    if not self.waiting:
      self.stop()


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


@dataclasses.dataclass(frozen=True)
class Policy:
  """Which versions on disk are served: the newest `latest` that load (TF Serving's and Triton's default is the
  newest one), every one (`all`), or the `specific` ones."""
  latest: int | None = 1
  specific: tuple[int, ...] = ()

  @classmethod
  def parse(cls, text: str) -> "Policy":
    kind, _, value = text.partition(":")
    try:
      if kind == "all" and not value:
        return cls(None)
      if kind == "latest" and int(value) >= 1:
        return cls(int(value))
      if kind == "specific" and value:
        return cls(None, tuple(sorted({int(v) for v in value.split(",")})))
    except ValueError:
      pass
    raise ConfigError(f"--version_policy {text!r}: write latest:N (the N newest versions), all, or specific:1,3.")

  def candidates(self, versions) -> list[int]:
    """The versions it may serve, newest first."""
    return sorted((v for v in versions if not self.specific or v in self.specific), reverse=True)

  def __str__(self) -> str:
    if self.latest:
      return f"latest:{self.latest}"
    return f"specific:{','.join(map(str, self.specific))}" if self.specific else "all"


def _warmup_inputs(predictor: Predictor) -> dict:
  inputs = {}
  for name, spec in predictor.signature.items():
    if spec["dtype"] == "str":
      inputs[name] = np.array(["warm up"], dtype=object)
    else:
      inputs[name] = np.zeros([1, *spec["shape"][1:]], spec["dtype"])
  return inputs


@dataclasses.dataclass
class Repository:
  root: Path | None = None  # DIR of --models
  singles: dict[str, Path] = dataclasses.field(default_factory=dict)  # --model NAME=EXPORT_DIR, served as version 1
  batching: dict = dataclasses.field(default_factory=dict)
  policy: Policy = Policy()
  backend: str = "onnx"
  buckets: tuple[int, ...] = ()
  threads: int = 0  # onnxruntime's threads per model call (Predictor.load)
  say: Callable[[str], None] = log.warning  # a line for the operator: a version served, unloaded or failed
  models: dict[str, dict[int, Version]] = dataclasses.field(default_factory=dict)
  failures: dict[str, str] = dataclasses.field(default_factory=dict)  # "name/version" -> why it is not served
  unloaded: set[str] = dataclasses.field(default_factory=set)  # unloaded by an admin: polls leave them alone
  _tried: dict[str, tuple] = dataclasses.field(default_factory=dict)  # "name/version" -> files of the last load
  _hooks: list[Callable[[Version], None]] = dataclasses.field(default_factory=list)
  _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

  def get(self, name: str, version: int | None = None) -> Version:
    versions = self.models.get(name)
    if not versions:
      raise KeyError(f"no model {name!r}; served: {', '.join(sorted(self.models)) or 'none'}")
    if version is None:
      return versions[max(versions)]
    if version not in versions:
      raise KeyError(f"model {name!r} has no version {version}; served: {sorted(versions)}")
    return versions[version]

  def on_serve(self, hook: Callable[[Version], None]) -> None:
    """Calls `hook(version)` for every version served now and for each one loaded later (e.g. metrics)."""
    self._hooks.append(hook)
    for versions in self.models.values():
      for entry in versions.values():
        hook(entry)

  def names(self) -> list[str]:
    """The models on disk (and those still served whose directory is gone)."""
    found = set(self.singles) | set(self.models)
    if self.root is not None:
      found |= {p.name for p in watcher.model_dirs(self.root)}
    return sorted(found)

  def on_disk(self, name: str) -> dict[int, Path]:
    if name in self.singles:
      return {1: self.singles[name]}
    return watcher.versions(self.root / name) if self.root is not None else {}

  def poll(self) -> None:
    """Syncs every model on disk that an admin did not unload."""
    for name in self.names():
      if name not in self.unloaded:
        self.sync(name)

  def sync(self, name: str, retry: bool = False) -> dict[int, Version]:
    """Loads the new or changed versions the policy wants (newest first), then swaps them in and unloads the ones
    it no longer wants or whose directory is gone, at once. A version that failed is tried again when its files
    change, or with `retry` (an admin's load, which also ends an admin's unload). Returns the versions served."""
    with self._lock:
      if retry:
        self.unloaded.discard(name)
      disk = self.on_disk(name)
      served = self.models.get(name, {})
      keep: dict[int, Version] = {}
      for version in self.policy.candidates(disk):
        if self.policy.latest and len(keep) == self.policy.latest:
          break
        key, files = f"{name}/{version}", watcher.fingerprint(disk[version])
        if self._tried.get(key) == files and (version in served or not retry):
          if version in served:
            keep[version] = served[version]
          continue  # unchanged since it loaded or failed
        self._tried[key] = files  # as they were before loading: a change during the load is seen next time
        entry = self._load(name, version, disk[version])
        if entry is not None:
          keep[version] = entry
        elif version in served:
          keep[version] = served[version]  # its files changed and do not load: the copy in memory serves on
      self._swap(name, keep, disk)
      return keep

  def unload(self, name: str) -> list[int]:
    """Stops serving every version of `name` until an admin's load (`sync(name, retry=True)`); returns them."""
    with self._lock:
      self.unloaded.add(name)
      served = sorted(self.models.get(name, {}))
      self._swap(name, {}, {})
      return served

  def index(self) -> list[dict]:
    """Every version on disk or served: {"name", "version", "state": READY | UNAVAILABLE, "reason"}."""
    rows = []
    for name in self.names():
      served = self.models.get(name, {})
      for version in sorted(set(self.on_disk(name)) | set(served)):
        reason = self.failures.get(f"{name}/{version}") or (
          "" if version in served else "unloaded by an admin" if name in self.unloaded
          else f"not served under the version policy {self.policy}")
        rows.append({"name": name, "version": str(version), "state": "READY" if version in served else "UNAVAILABLE",
                     "reason": reason})
    return rows

  def _load(self, name: str, version: int, directory: Path) -> Version | None:
    try:
      predictor = Predictor.load(directory, self.backend, self.buckets, self.threads)
      entry = Version(name, version, predictor, None)
      entry.batcher = ServedBatcher(entry.run, **self.batching)
      predictor.warm_up()  # every batch bucket compiled before the first request
      entry.run(predictor.check(_warmup_inputs(predictor)))  # the preprocessing too, and any first-call cost
      if "generation" in predictor.manifest:
        entry.generator = Generator.from_verified(directory, predictor.manifest)  # checked by Predictor.load
    except Exception as e:  # noqa: BLE001  (a bad version is reported, the others are served)
      reason = " ".join(str(e).split())[:500]
      self.failures = {**self.failures, f"{name}/{version}": reason}
      self.say(f"warning: {name}/{version} is not served: {reason}")
      return None
    self.failures = {k: v for k, v in self.failures.items() if k != f"{name}/{version}"}
    for hook in self._hooks:
      hook(entry)
    return entry

  def _swap(self, name: str, keep: dict[int, Version], disk: dict[int, Path]) -> None:
    """`keep` becomes what `name` serves, in one assignment; what is gone from `disk` is forgotten."""
    served = self.models.get(name, {})
    models = {k: v for k, v in self.models.items() if k != name}
    self.models = {**models, name: keep} if keep else models
    gone = lambda key: key.startswith(f"{name}/") and int(key.rpartition("/")[2]) not in disk
    self.failures = {k: v for k, v in self.failures.items() if not gone(k)}
    self._tried = {k: v for k, v in self._tried.items() if not gone(k)}
    for version, entry in keep.items():
      if served.get(version) is not entry:
        self.say(f"serving {name} version {version}")
    for version, entry in served.items():
      if keep.get(version) is not entry:
        entry.batcher.retire()
      if version not in keep:
        self._tried.pop(f"{name}/{version}", None)  # loaded again if the policy wants it back
        self.say(f"unloaded {name} version {version}")


def load(models_dir: str | None, single: list[str], batching: dict, policy: Policy = Policy(), backend: str = "onnx",
         buckets: tuple[int, ...] = (), threads: int = 0) -> Repository:
  """Every DIR/<name>/<version>/ of `models_dir` the policy picks, and every NAME=EXPORT_DIR of `single` (as
  version 1). Failures are recorded, not said (the caller reports them in its own words)."""
  singles = {}
  for spec in single:
    name, sep, directory = spec.partition("=")
    if not sep or not name or not directory:
      raise ConfigError(f"--model {spec!r}: write it as NAME=EXPORT_DIR.")
    singles[name] = Path(directory)
  root = Path(models_dir) if models_dir else None
  if root is not None and not root.is_dir():
    raise ConfigError(f"--models {models_dir} is not a directory; give a directory of <name>/<version>/ exports.")
  if root is None and not singles:
    raise ConfigError("No models to serve: give --models DIR (holding <name>/<version>/ exports) or "
                      "--model NAME=EXPORT_DIR.")
  repo = Repository(root, singles, batching, policy, backend, buckets, threads, say=lambda line: None)
  repo.poll()
  if not repo.models:
    reasons = "; ".join(f"{k}: {v}" for k, v in repo.failures.items())
    none = f"--version_policy {policy} picks none of the versions in {models_dir or 'the --model exports (1)'}"
    raise ConfigError(f"No model could be loaded: {reasons or none}.")
  return repo
