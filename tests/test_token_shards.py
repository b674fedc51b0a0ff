"""Token shards: scripts/prepare_data.py's output read back exactly, window by window, each process its own rows.

The corpus is real text: the repository's own documentation, written to one file.
"""

import unicodedata

import numpy as np
import pytest

from research import cli, parallel
from research import config as config_lib
from research.data import get_split, prepare, token_shards, tokenizers
from research.data.permutation import shuffled
from research.data.pipeline import Pipeline
from research.errors import ConfigError, DataUnavailableError
from research.train import experiment
from tests import helpers

WINDOW, SHARD_TOKENS = 65, 4096


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  path = tmp_path_factory.mktemp("corpus") / "docs.txt"
  text = "".join(p.read_text() for p in sorted((helpers.ROOT / "docs").glob("*.md")))
  path.write_bytes(text.encode()[:60_000].decode("utf-8", "ignore").encode())
  return path


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("shards") / "bytes"
  prepare.prepare(corpus, out, window=WINDOW, shard_tokens=SHARD_TOKENS)
  return out


def test_byte_shards_hold_the_text_and_windows_read_back_exactly(corpus, shards):
  index = token_shards.verify(shards)
  data = corpus.read_bytes()
  train, test = index["splits"]["train"], index["splits"]["test"]
  assert (index["dtype"], index["window"], index["tokenizer"]["vocab_size"]) == ("uint8", WINDOW, 256)
  assert train["tokens"] + test["tokens"] == len(data) and test["tokens"] == len(data) - int(len(data) * 0.9)
  assert [s["tokens"] for s in train["shards"]] == [SHARD_TOKENS] * (train["tokens"] // SHARD_TOKENS) + [
      train["tokens"] % SHARD_TOKENS]
  stored = b"".join((shards / s["file"]).read_bytes() for s in train["shards"] + test["shards"])
  assert stored == data

  windows = get_split(f"tokens:{shards}", "train")["tokens"]
  per_shard = (SHARD_TOKENS - WINDOW) // (WINDOW - 1) + 1  # windows start every WINDOW - 1 tokens, inside a shard
  assert windows.shape[1] == WINDOW and len(windows) > 10 * per_shard
  second_shard = per_shard + 2  # the third window of the second shard
  start = SHARD_TOKENS + 2 * (WINDOW - 1)
  np.testing.assert_array_equal(windows[second_shard], np.frombuffer(data[start:start + WINDOW], np.uint8))
  np.testing.assert_array_equal(windows[[5, second_shard, -1]][1], windows[second_shard])
  np.testing.assert_array_equal(windows[:3][2], windows[2])
  test_windows = get_split(f"tokens:{shards}", "test")["tokens"]
  np.testing.assert_array_equal(test_windows[0], np.frombuffer(data[train["tokens"]:][:WINDOW], np.uint8))


def test_a_fitted_char_tokenizer_round_trips_the_text(corpus, tmp_path):
  index = prepare.prepare(corpus, tmp_path / "char", tokenizer="char", window=WINDOW)
  fitted = tokenizers.load(tmp_path / "char" / "tokenizer.json")
  assert index["tokenizer"]["kind"] == "char" and index["dtype"] == "uint8" and index["tokenizer"]["sha256"]
  windows = get_split(f"tokens:{tmp_path / 'char'}", "train")["tokens"]
  text = unicodedata.normalize("NFKC", corpus.read_text())
  assert fitted.decode(windows[0].tolist()) == text[:WINDOW]


def test_blocks_end_on_characters_and_keep_every_byte(tmp_path):
  path = tmp_path / "wide.txt"
  path.write_text("naïve café — ünïcödé " * 50 + "no newline here " * 40 + "é" * 30)
  pieces = [block for _, block in prepare.blocks([path], block_bytes=7)]
  assert b"".join(pieces) == path.read_bytes() and len(pieces) > 100
  assert all(block.decode("utf-8") for block in pieces)  # none splits a character


def test_each_process_reads_only_its_own_rows(shards):
  """Two processes of one run (simulated by their process index) read disjoint halves of each global batch, which
  together are the one-process batch, and read no other bytes."""
  mesh = parallel.make_mesh(config_lib.load("configs/shakespeare_gpt.py:smoke"))
  batch, steps = 8, 5

  def pipeline(process_index, process_count):
    windows = get_split(f"tokens:{shards}", "train")["tokens"]
    p = Pipeline({"tokens": windows}, batch_size=batch, sharding=parallel.batch_sharding(mesh), preprocess=lambda b: b,
                 seed=3)
    p.process_index, p.process_count, p.local_size = process_index, process_count, batch // process_count
    return p, windows

  whole, every_window = pipeline(0, 1)
  halves = [pipeline(i, 2) for i in range(2)]
  for step in range(steps):
    rows = [p.indices(step) for p, _ in halves]
    assert not set(rows[0]) & set(rows[1])
    np.testing.assert_array_equal(np.concatenate(rows), whole.indices(step))
    for (p, _), own in zip(halves, rows):
      np.testing.assert_array_equal(p.host_batch(step)["tokens"], every_window[np.sort(own)])
  for _, windows in halves:
    assert windows.bytes_read == steps * (batch // 2) * WINDOW  # its own rows, and nothing else


def test_the_streamed_order_is_a_seeded_permutation_at_any_size():
  for n in (1, 2, 7, 1000, 4097):
    assert sorted(shuffled(np.arange(n), n, (0, 1)).tolist()) == list(range(n))
  assert not np.array_equal(shuffled(np.arange(50), 50, (0, 1)), shuffled(np.arange(50), 50, (0, 2)))
  np.testing.assert_array_equal(shuffled(np.arange(10, 20), 10**12, (5, 0)), shuffled(np.arange(10, 20), 10**12, (5, 0)))
  assert shuffled(np.arange(8), 10**12, (5, 0)).max() < 10**12


def _one_line_error(capsys, command, argv) -> str:
  code = cli.main(command, argv) if command == "train" else prepare.main(argv)
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), (code, err)
  return err


def test_bad_corpora_and_shards_are_one_line_errors(corpus, shards, tmp_path, capsys):
  assert "does not exist" in _one_line_error(capsys, "prepare", ["--input", str(tmp_path / "nope"), "--output", "x"])
  assert "is not empty" in _one_line_error(capsys, "prepare", ["--input", str(corpus), "--output", str(shards)])
  (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1") * 100)
  err = _one_line_error(capsys, "prepare", ["--input", str(tmp_path / "latin1.txt"), "--output",
                                            str(tmp_path / "out"), "--tokenizer", "char"])
  assert "is not UTF-8" in err and "--tokenizer byte" in err and not (tmp_path / "out").exists()

  train = ["--config", "configs/shakespeare_gpt.py:smoke", "--workdir", str(tmp_path / "run")]
  err = _one_line_error(capsys, "train", [*train, f"--config.data.name=tokens:{tmp_path / 'missing'}"])
  assert "does not exist" in err and "prepare_data.py" in err

  broken = tmp_path / "broken"
  broken.mkdir()
  for f in shards.iterdir():
    (broken / f.name).write_bytes(f.read_bytes())
  (broken / "train-00001.bin").write_bytes((broken / "train-00001.bin").read_bytes()[:-10])
  err = _one_line_error(capsys, "train", [*train, f"--config.data.name=tokens:{broken}"])
  assert "train-00001.bin" in err and "truncated" in err
  (broken / "train-00001.bin").unlink()
  err = _one_line_error(capsys, "train", [*train, f"--config.data.name=tokens:{broken}"])
  assert "train-00001.bin is missing" in err

  changed = tmp_path / "changed"
  changed.mkdir()
  for f in shards.iterdir():
    (changed / f.name).write_bytes(f.read_bytes())
  (changed / "train-00000.bin").write_bytes((shards / "train-00000.bin").read_bytes().replace(b"e", b"E", 1))
  err = _one_line_error(capsys, "prepare", ["--verify", str(changed)])
  assert "train-00000.bin does not match the sha256" in err


def test_shards_of_a_larger_vocabulary_than_the_model_are_refused(shards):
  config = config_lib.load("configs/shakespeare_gpt.py:smoke")
  config.data.name = f"tokens:{shards}"
  config.model.vocab_size = 100
  with pytest.raises(ConfigError, match=r"model.vocab_size=100 is smaller than .* \(256 ids\): set "
                     r"--config.model.vocab_size=256"):
    experiment.load_split(config, "train")
  with pytest.raises(DataUnavailableError, match="has splits"):
    get_split(f"tokens:{shards}", "validation")
