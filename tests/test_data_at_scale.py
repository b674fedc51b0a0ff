"""Training from token shards: a resumed run is bitwise the uninterrupted one, and memory does not grow with the corpus.

The memory bound is checked on the real scripts/train.py in a subprocess. Its peak resident memory comes from
`os.wait4`'s rusage (`ru_maxrss`: the kernel's exact high-water mark, no sampling). An address-space limit
(RLIMIT_AS) would be the obvious way to *set* a limit, but JAX and XLA reserve large virtual ranges they never
touch, so such a limit fails on start-up, not on data; a cgroup needs privileges this machine's tests lack. So the
test sets its limit on what the data may add: the same run is trained on a small corpus and on one
`BIG_CORPUS_MIB` larger, several times the `DATA_MEMORY_LIMIT_MIB` the larger run may add to its peak. Loading the
split whole, or mapping and touching it, would add the whole corpus.
"""

import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np

from research.data import prepare, token_shards
from tests import helpers

GPT_SMOKE = "configs/shakespeare_gpt.py:smoke"
DATA_MEMORY_LIMIT_MIB, BIG_CORPUS_MIB = 64, 512
WINDOW = 257  # the GPT configs' windows: 256 targets


def test_a_run_on_shards_stopped_and_resumed_matches_a_straight_run_bitwise(tmp_path):
  corpus = tmp_path / "corpus.txt"  # real text: 52 train windows, 3 steps per epoch at the smoke batch of 16
  corpus.write_bytes(b"".join(p.read_bytes() for p in sorted((helpers.ROOT / "docs").glob("*.md")))[:15_000])
  prepare.prepare(corpus, tmp_path / "shards", window=WINDOW)
  data = f"--config.data.name=tokens:{tmp_path / 'shards'}"

  helpers.train_here(tmp_path / "straight", data, config=GPT_SMOKE)
  helpers.train_here(tmp_path / "resumed", data, "--config.train.stop_after_steps=4", config=GPT_SMOKE)
  assert (tmp_path / "resumed" / "checkpoints" / "4").is_dir() and not (tmp_path / "resumed/checkpoints/6").exists()
  meta = json.loads((tmp_path / "resumed" / "checkpoints" / "4" / "meta" / "metadata").read_text())
  helpers.train_here(tmp_path / "resumed", data, config=GPT_SMOKE)  # picks up at step 4, mid-epoch

  assert meta["data"]["epoch"] == 1 and meta["data"]["index"] == 1  # the position saved with step 4
  straight, resumed = (helpers.checkpoint_params(tmp_path / run, 6) for run in ("straight", "resumed"))
  assert straight.keys() == resumed.keys()
  for key in straight:
    np.testing.assert_array_equal(straight[key], resumed[key], err_msg=key)


def _random_shards(directory, train_mib: int) -> None:
  """Byte-vocabulary shards of `train_mib` MiB of random train tokens and a small test split, written in MiB blocks."""
  rng = np.random.default_rng(0)
  splits = {}
  for split, mib in (("train", train_mib), ("test", 0)):
    writer = token_shards.SplitWriter(directory, split, np.uint8, shard_tokens=1 << 27)
    for _ in range(mib):
      writer.add(rng.integers(0, 256, 1 << 20, dtype=np.uint8))
    writer.add(rng.integers(0, 256, 64 << 10, dtype=np.uint8))
    splits[split] = writer.close()
  token_shards.write_index(directory, {"dtype": "uint8", "window": WINDOW, "splits": splits,
                                       "tokenizer": {"kind": "byte", "vocab_size": 256, "file": None, "sha256": None}})


def _peak_rss_mib(shards, workdir) -> float:
  """scripts/train.py's peak resident memory training the smoke GPT on `shards` (one device)."""
  args = [sys.executable, str(helpers.ROOT / "scripts/train.py"), "--config", GPT_SMOKE, "--workdir", str(workdir),
          f"--config.data.name=tokens:{shards}"]
  with open(workdir.with_suffix(".log"), "w+") as log:
    proc = subprocess.Popen(args, cwd=helpers.ROOT, env=helpers.env_with_devices(1), stdout=log, stderr=log)
    timer = threading.Timer(300, proc.kill)  # a hung run fails the test instead of hanging it
    timer.start()
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.seek(0)
    assert proc.returncode == 0, log.read()[-3000:]
  return usage.ru_maxrss / 1024  # KiB on Linux


def test_training_on_a_corpus_8x_the_memory_limit_keeps_memory_flat(tmp_path):
  small, big = tmp_path / "small", tmp_path / "big"
  small.mkdir()
  big.mkdir()
  try:
    _random_shards(small, 1)
    _random_shards(big, 1 + BIG_CORPUS_MIB)
    peaks = {name: _peak_rss_mib(shards, tmp_path / f"run_{name}") for name, shards in (("small", small), ("big", big))}
  finally:
    shutil.rmtree(big)  # pytest keeps recent temporary directories: do not leave half a gigabyte behind
  growth = peaks["big"] - peaks["small"]
  assert growth < DATA_MEMORY_LIMIT_MIB, (
      f"peak RSS grew by {growth:.0f} MiB for {BIG_CORPUS_MIB} MiB more corpus (limit {DATA_MEMORY_LIMIT_MIB} MiB): "
      f"{peaks}")
