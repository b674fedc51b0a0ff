"""A text corpus -> token shards (research/data/token_shards.py), streamed: memory stays bounded by one block.

    python scripts/prepare_data.py --input corpus/ --output data/corpus_tokens [--tokenizer byte|char|bpe]

The files (one text file, or the files matching `--glob` under a directory, in
sorted order) are read as one stream in blocks of whole lines. The first
`1 - test_fraction` of its bytes go to the `train` split and the rest to `test`
(by position, so no test window overlaps the training text). Tokenizers:

- `byte`: the UTF-8 bytes themselves, ids 0..255, exactly what the Shakespeare
  GPT (configs/shakespeare_gpt.py) and scripts/generate.py use; nothing to fit;
- `char` / `bpe`: research/data/tokenizers.py's kinds, fitted on the train part
  in a first pass (HF `tokenizers` streams it), saved as DIR/tokenizer.json.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from research.data import token_shards, tokenizers
from research.errors import ConfigError

TOKENIZERS = ("byte", "char", "bpe")
BLOCK_BYTES = 1 << 20
DEFAULT_VOCAB = {"byte": 256, "char": 1024, "bpe": 4096}


def corpus_files(source: str | Path, glob: str = "*.txt") -> list[Path]:
  """The text files of `source`: itself if a file, else the files under it matching `glob`, sorted."""
  source = Path(source)
  if source.is_file():
    return [source]
  if not source.is_dir():
    raise ConfigError(f"--input {source} does not exist; give a text file or a directory of text files.")
  files = sorted(p for p in source.glob(glob) if p.is_file())
  if not files:
    raise ConfigError(f"--input {source} holds no files matching --glob {glob!r}; pass the pattern of its text "
                      f"files, e.g. --glob '**/*.txt'.")
  return files


def _char_start(data: bytes, i: int) -> int:
  """The first index >= i that starts a UTF-8 character (continuation bytes are 0b10xxxxxx)."""
  while i < len(data) and data[i] & 0xC0 == 0x80:
    i += 1
  return i


def blocks(files: list[Path], block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[Path, bytes]]:
  """(file, block) over the files in order, each block about `block_bytes`, ending after a newline when the block
  holds one, else at a UTF-8 character boundary: a block never splits a character."""
  for path in files:
    carry = b""
    with open(path, "rb") as f:
      while chunk := f.read(block_bytes):
        data = carry + chunk
        cut = data.rfind(b"\n") + 1 or _char_start(data, max(len(data) - 4, 0))
        carry = data[cut:]
        if cut:
          yield path, data[:cut]
    if carry:
      yield path, carry


def split_blocks(files: list[Path], test_fraction: float, block_bytes: int = BLOCK_BYTES):
  """(split, file, block) with the first `1 - test_fraction` of the stream's bytes in `train`, the rest in `test`
  (the cut moved to the next character boundary)."""
  cut = int(sum(p.stat().st_size for p in files) * (1 - test_fraction))
  seen = 0
  for path, block in blocks(files, block_bytes):
    if seen + len(block) <= cut:
      yield "train", path, block
    elif seen >= cut:
      yield "test", path, block
    else:
      at = _char_start(block, cut - seen)
      yield "train", path, block[:at]
      yield "test", path, block[at:]
    seen += len(block)


def _text(path: Path, block: bytes) -> str:
  try:
    return block.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ConfigError(f"{path} is not UTF-8 text (byte {e.start} of a block: {e.reason}); convert it, or use "
                      f"--tokenizer byte, which takes any bytes.") from None


def fit_tokenizer(files: list[Path], kind: str, vocab_size: int, test_fraction: float, output: Path) -> dict:
  """Fits a `char` or `bpe` tokenizer on the train part of the stream; saves it in `output`."""
  train_text = (_text(path, block) for split, path, block in split_blocks(files, test_fraction) if split == "train")
  fitted = tokenizers.train(train_text, kind, vocab_size, lowercase=False, min_frequency=1)
  path = output / "tokenizer.json"
  fitted.save(str(path))
  return {"kind": kind, "vocab_size": fitted.get_vocab_size(), "file": path.name,
          "sha256": token_shards.file_sha256(path)}


def prepare(source: str | Path, output: str | Path, *, tokenizer: str = "byte", vocab_size: int = 0,
            window: int = 257, test_fraction: float = 0.1, shard_tokens: int = 1 << 27, glob: str = "*.txt",
            block_bytes: int = BLOCK_BYTES) -> dict:
  """Tokenizes the corpus `source` into shards in `output` (a new or empty directory); returns the index."""
  if tokenizer not in TOKENIZERS:
    raise ConfigError(f"--tokenizer {tokenizer!r}: choose one of {', '.join(TOKENIZERS)}.")
  if window < 2 or shard_tokens < window:
    raise ConfigError(f"--window {window} / --shard_tokens {shard_tokens}: a window holds at least 2 tokens and a "
                      f"shard at least one window.")
  if not 0 < test_fraction < 1:
    raise ConfigError(f"--test_fraction {test_fraction}: choose a fraction between 0 and 1, e.g. 0.1.")
  files = corpus_files(source, glob)
  output = Path(output)
  if output.exists() and any(output.iterdir()):
    raise ConfigError(f"--output {output} is not empty; choose a new directory, or delete it first.")
  output.mkdir(parents=True, exist_ok=True)
  try:
    return _write(files, output, tokenizer, vocab_size or DEFAULT_VOCAB[tokenizer], window, test_fraction,
                  shard_tokens, block_bytes)
  except BaseException:
    shutil.rmtree(output, ignore_errors=True)  # half a directory would only mislead
    raise


def _write(files, output, kind, vocab_size, window, test_fraction, shard_tokens, block_bytes) -> dict:
  if kind == "byte":
    described, encode = {"kind": "byte", "vocab_size": 256, "file": None, "sha256": None}, None
  else:
    described = fit_tokenizer(files, kind, vocab_size, test_fraction, output)
    fitted = tokenizers.load(output / described["file"])
    encode = lambda path, block: fitted.encode(_text(path, block)).ids
  dtype = token_shards.dtype_for(described["vocab_size"])
  writers = {split: token_shards.SplitWriter(output, split, dtype, shard_tokens) for split in token_shards.SPLITS}
  for split, path, block in split_blocks(files, test_fraction, block_bytes):
    writers[split].add(np.frombuffer(block, np.uint8) if encode is None else np.asarray(encode(path, block)))
  index = {"dtype": dtype.name, "window": window, "tokenizer": described,
           "splits": {split: writer.close() for split, writer in writers.items()},
           "source": {"files": [str(p) for p in files], "bytes": sum(p.stat().st_size for p in files)}}
  token_shards.write_index(output, index)
  return token_shards.read_index(output)


def parser():
  from research.cli import script_parser

  p = script_parser("prepare_data.py", "Tokenize a text corpus into token shards that training streams from disk.",
                    "Train on the shards with --config.data.name=tokens:OUTPUT, e.g.\n"
                    "  python scripts/prepare_data.py --input corpus/ --output data/corpus_tokens\n"
                    "  python scripts/train.py --config configs/shakespeare_gpt.py --workdir runs/corpus_gpt "
                    "--config.data.name=tokens:data/corpus_tokens\n"
                    "  python scripts/prepare_data.py --verify data/corpus_tokens   # recompute every sha256\n"
                    "docs/data.md, section 'Data at scale', explains the format.")
  p.add_argument("--input", metavar="PATH", help="a text file, or a directory of them (see --glob)")
  p.add_argument("--output", metavar="DIR", help="a new or empty directory for the shards and index.json")
  p.add_argument("--glob", default="*.txt", help="the files of an --input directory (default '*.txt'; "
                 "'**/*.txt' also searches subdirectories)")
  p.add_argument("--tokenizer", default="byte", choices=TOKENIZERS,
                 help="byte (default: UTF-8 bytes, what configs/shakespeare_gpt.py and generate.py use), char or bpe")
  p.add_argument("--vocab_size", type=int, default=0, metavar="N",
                 help=f"the most ids of a fitted tokenizer (default {DEFAULT_VOCAB['char']} for char, "
                 f"{DEFAULT_VOCAB['bpe']} for bpe)")
  p.add_argument("--window", type=int, default=257, metavar="N",
                 help="tokens per training example (default 257: 256 targets, as configs/shakespeare_gpt.py expects)")
  p.add_argument("--test_fraction", type=float, default=0.1, metavar="F",
                 help="the last fraction of the corpus that becomes the test split (default 0.1)")
  p.add_argument("--shard_tokens", type=int, default=1 << 27, metavar="N", help="tokens per shard file "
                 "(default 2**27)")
  p.add_argument("--verify", metavar="DIR", help="instead of preparing: recompute the sha256 of every file of DIR")
  return p


def main(argv: list[str]) -> int:
  """scripts/prepare_data.py: bad input exits 2 with one line, a failed write exits 1."""
  from research.errors import DataUnavailableError

  try:
    args = parser().parse_args(argv)
    if args.verify:
      index = token_shards.verify(args.verify)
      print(f"{args.verify}: every shard matches its sha256 ({summary(index)})")
      return 0
    if not (args.input and args.output):
      raise ConfigError("give --input TEXT_FILE_OR_DIR and --output DIR (or --verify DIR); see --help.")
    index = prepare(args.input, args.output, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                    window=args.window, test_fraction=args.test_fraction, shard_tokens=args.shard_tokens,
                    glob=args.glob)
    print(f"wrote {args.output}: {summary(index)}; train with --config.data.name=tokens:{args.output}")
    return 0
  except (ConfigError, DataUnavailableError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except OSError as e:
    print(f"error: {e.filename or 'a file'}: {e.strerror or e}. Free space or fix permissions, then rerun.",
          file=sys.stderr)
    return 1


def summary(index: dict) -> str:
  splits = ", ".join(f"{split} {entry['tokens']:,} tokens in {len(entry['shards'])} shards"
                     for split, entry in index["splits"].items())
  tokenizer = index["tokenizer"]
  return f"{splits}; tokenizer {tokenizer['kind']} ({tokenizer['vocab_size']} ids, {index['dtype']})"
