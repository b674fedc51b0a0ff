"""IMDB: 50,000 movie reviews (25,000 train / 25,000 test, balanced), positive (1) or negative (0).

Arrays: {"text": object[N] of str, "label": int32[N]}. Splits: "train", "test".

The only source is the HF hub (`stanfordnlp/imdb`); the first load is cached
under `$RESEARCH_DATA_DIR/imdb/`. No real copy of IMDB is distributed on PyPI or
in Debian packages, so without the hub (and without that cache) loading fails
with an error that says so. For the same task offline, use `rotten_tomatoes`.
Reviews hold HTML line breaks (`<br /><br />`): configs clean them with
`normalize_text`.
"""

from __future__ import annotations

from research.data import sources, text
from research.data.rotten_tomatoes import from_hub
from research.registry import DATASETS

HUB_REPO = "stanfordnlp/imdb"
SPLITS = ("train", "test")
LABEL_NAMES = ["negative", "positive"]
NUM_EXAMPLES = {"train": 25_000, "test": 25_000}
NO_OFFLINE_COPY = ("no offline copy of IMDB exists (nothing on PyPI or in Debian packages ships it); it loads "
                   "only from the HF hub. Run once where huggingface.co is reachable (the split is then cached), "
                   "or train the same models offline on 'rotten_tomatoes'.")


def _check(arrays: sources.Split, split: str) -> sources.Split:
  if len(arrays["label"]) != NUM_EXAMPLES[split]:
    raise ValueError(f"expected {NUM_EXAMPLES[split]} {split} reviews, got {len(arrays['label'])}")
  return arrays


def _no_offline_copy(split: str) -> sources.Split:
  raise FileNotFoundError(NO_OFFLINE_COPY)


@DATASETS.register("imdb")
def imdb(split: str) -> sources.Split:
  if split not in SPLITS:
    raise ValueError(f"imdb has splits {list(SPLITS)}, not {split!r}.")
  return text.load_text_split("imdb", split, [
      (f"HF hub {HUB_REPO}", lambda s: _check(sources.load_hub(HUB_REPO, s, from_hub), s)),
      ("offline copy", _no_offline_copy),
  ])
