"""Tokenizers as *fitted* preprocessing ops: trained on the train split, saved in the workdir.

    config.data.preprocess = "tokenize(kind='wordpiece', vocab_size=8000, max_length=64)"

`tokenize` turns `batch["text"]` (an object array of str) into

- `batch["tokens"]`: int32[B, max_length] token ids, padded with id 0 (`[PAD]`)
  and truncated to `max_length`;
- `batch["token_mask"]`: int32[B, max_length], 1 on real tokens, 0 on padding
  (named so as not to clash with the eval pipeline's per-row `mask`);

and removes `batch["text"]` (strings cannot become device arrays).

Kinds, all built with HF `tokenizers` and saved as one `tokenizer.json`::

| kind        | model                               | round trip |
|-------------|-------------------------------------|------------|
| `char`      | one token per character (WordLevel) | exact, after normalization |
| `bpe`       | byte-level BPE (GPT-2 style)        | exact, after normalization |
| `wordpiece` | BERT-style WordPiece                | re-encoding the decoded text gives the same ids |

Training is deterministic for `char` and `bpe`. HF's WordPiece trainer breaks
ties between equally frequent merges in hash-map order (huggingface/tokenizers#1794):
ids are renumbered canonically here, but on a small corpus two fresh fits can
still pick different merges. A run fits once and reuses its saved file, so a
run, its resumes, evaluations and exports always agree; prefer `bpe` where two
fresh runs must match exactly.

Every tokenizer NFKC-normalizes (and by default lowercases) inside the saved
file, so raw text at serving time is treated as in training. The special tokens
are `[PAD]` = 0, `[UNK]` = 1, `[CLS]` = 2, `[SEP]` = 3, `[MASK]` = 4; ids are
always below the op's `vocab_size`, so a model's embedding table of
`vocab_size` rows covers them. Models derive their padding mask from
`tokens != 0` (see research/models/rnn.py), so the token ids alone are enough.

Fitting happens once, when training starts: the file is written to the workdir
(`assets_dir`) and its name, size of vocabulary and sha256 go into
`preprocess_state.json`. Resumed runs, `evaluate.py` and the exporters reload
that file and refuse one whose sha256 changed.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np

from research import atomic
from research.errors import ConfigError
from research.registry import OPS

KINDS = ("char", "bpe", "wordpiece")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))


def _sha256(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def train(texts, kind: str = "wordpiece", vocab_size: int = 8000, *, lowercase: bool = True,
          min_frequency: int = 2):
  """Trains an HF `tokenizers.Tokenizer` of `kind` on `texts`; its ids are all < `vocab_size`."""
  from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

  if kind not in KINDS:
    raise ConfigError(f"tokenize: unknown kind {kind!r}; choose one of {', '.join(KINDS)}.")
  specials = list(SPECIAL_TOKENS)
  if kind == "char":
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("(?m)."), behavior="isolated")  # (?m): '.' matches \n
    tokenizer.decoder = decoders.Fuse()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=specials, show_progress=False)
  elif kind == "bpe":
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials):
      raise ConfigError(f"tokenize(kind='bpe'): vocab_size={vocab_size} is below the {len(alphabet)} bytes "
                        f"plus {len(specials)} special tokens; use at least {len(alphabet) + len(specials)}.")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                  initial_alphabet=alphabet, show_progress=False)
  else:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=specials, limit_alphabet=max(vocab_size // 4, 100),
                                        show_progress=False)
  steps = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
  tokenizer.normalizer = normalizers.Sequence(steps)
  length = len(texts) if hasattr(texts, "__len__") else None  # a generator streams (scripts/prepare_data.py)
  tokenizer.train_from_iterator((str(t) for t in texts), trainer=trainer, length=length)
  if kind == "wordpiece":
    # HF's WordPiece trainer numbers its vocabulary in hash-map order, different in every process
    # (huggingface/tokenizers#1794): renumber it (specials first, then sorted) so ids are reproducible.
    vocab = tokenizer.get_vocab()
    ordered = specials + sorted(set(vocab) - set(specials))
    tokenizer.model = models.WordPiece({token: i for i, token in enumerate(ordered)}, unk_token="[UNK]")
  for i, token in enumerate(specials):
    assert tokenizer.token_to_id(token) == i, f"{token} must have id {i}"
  if tokenizer.get_vocab_size() > vocab_size:
    raise ConfigError(f"tokenize(kind={kind!r}): the trained vocabulary has {tokenizer.get_vocab_size()} "
                      f"tokens, more than vocab_size={vocab_size}; raise vocab_size.")
  return tokenizer


def load(path: str | Path, max_length: int | None = None, truncation_side: str = "right"):
  """A saved tokenizer, padding and truncating to `max_length` when given."""
  from tokenizers import Tokenizer

  tokenizer = Tokenizer.from_file(str(path))
  if max_length:
    tokenizer.enable_padding(pad_id=PAD_ID, pad_token=SPECIAL_TOKENS[PAD_ID], length=max_length)
    tokenizer.enable_truncation(max_length, direction=truncation_side)
  return tokenizer


def encode(tokenizer, texts) -> tuple[np.ndarray, np.ndarray]:
  """Texts -> (int32 ids [B, L], int32 mask [B, L]) with a tokenizer from `load(..., max_length)`."""
  encodings = tokenizer.encode_batch([str(t) for t in texts])
  if not encodings:
    length = (tokenizer.padding or {}).get("length") or 0
    return np.zeros((0, length), np.int32), np.zeros((0, length), np.int32)
  ids = np.asarray([e.ids for e in encodings], dtype=np.int32)
  mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int32)
  return ids, mask


class Tokenize:
  """`tokenize(kind, vocab_size, max_length, ...)`: text -> padded token ids and a token mask.

  Arguments (all keyword):
    kind: "char", "bpe" or "wordpiece".
    vocab_size: the most distinct ids (specials included); every id is below it.
    max_length: tokens per example after padding / truncation.
    truncation_side: "right" keeps the beginning of long texts, "left" the end.
    lowercase: lowercase inside the tokenizer (NFKC is always applied).
    min_frequency: the fewest occurrences in the train split for a token or merge.
    key / output / mask_key: the input column, and the two output columns.
    file: the tokenizer's file name in the workdir.
  """

  def __init__(self):
    self._cache: dict[tuple, Any] = {}
    self._lock = threading.Lock()

  def fit(self, arrays, assets_dir: Path, kind: str = "wordpiece", vocab_size: int = 8000, max_length: int = 128,
          truncation_side: str = "right", lowercase: bool = True, min_frequency: int = 2, key: str = "text",
          output: str = "tokens", mask_key: str = "token_mask", file: str = "tokenizer.json") -> dict:
    _check_args(max_length, truncation_side)
    if key not in arrays:
      raise ConfigError(f"tokenize: the train split has no column {key!r}; it has {sorted(arrays)}.")
    tokenizer = train(arrays[key], kind, vocab_size, lowercase=lowercase, min_frequency=min_frequency)
    path = Path(assets_dir) / file
    with atomic.replacing(path) as tmp:  # a crash never leaves half a tokenizer
      tokenizer.save(str(tmp))
    return {"file": file, "kind": kind, "vocab_size": tokenizer.get_vocab_size(), "pad_id": PAD_ID,
            "sha256": _sha256(path)}

  def tokenizer(self, state: dict, assets_dir: Path, max_length: int, truncation_side: str = "right"):
    """The fitted tokenizer (loaded once per process, checked against the sha256 recorded at fit time)."""
    path = Path(assets_dir) / state["file"]
    cache_key = (str(path), state["sha256"], max_length, truncation_side)
    with self._lock:
      if cache_key not in self._cache:
        if not path.exists():
          raise ConfigError(f"The tokenizer file {path} is missing; it is written when training starts. "
                            f"Restore it from the run, or train in a fresh workdir.")
        if _sha256(path) != state["sha256"]:
          raise ConfigError(f"{path} changed since the run was trained (sha256 differs from "
                            f"preprocess_state.json); restore the run's own tokenizer file.")
        self._cache[cache_key] = load(path, max_length, truncation_side)
      return self._cache[cache_key]

  def __call__(self, batch, state: dict, assets_dir: Path, kind: str = "wordpiece", vocab_size: int = 8000,
               max_length: int = 128, truncation_side: str = "right", lowercase: bool = True,
               min_frequency: int = 2, key: str = "text", output: str = "tokens", mask_key: str = "token_mask",
               file: str = "tokenizer.json"):
    _check_args(max_length, truncation_side)
    ids, mask = encode(self.tokenizer(state, assets_dir, max_length, truncation_side), batch[key])
    out = {k: v for k, v in batch.items() if k != key}
    return {**out, output: ids, mask_key: mask}


def _check_args(max_length: int, truncation_side: str) -> None:
  if not isinstance(max_length, int) or max_length <= 0:
    raise ConfigError(f"tokenize: max_length must be a positive int, got {max_length!r}.")
  if truncation_side not in ("right", "left"):
    raise ConfigError(f"tokenize: truncation_side must be 'right' or 'left', got {truncation_side!r}.")


OPS.register("tokenize")(Tokenize())


def decode(tokenizer, ids, skip_special_tokens: bool = True) -> str:
  """Token ids (padding included) -> text."""
  return tokenizer.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=skip_special_tokens)
