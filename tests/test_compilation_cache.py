"""research/train/compilation.py's FileCache, JAX's store for compiled programs: a reader never sees half an entry
while another process writes it, the least recently used entries go first, and JAX compiles into it."""

import hashlib
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from research.train import compilation
from tests import helpers

ENTRY_BYTES = 4 << 20


def _value(key: str) -> bytes:
  """The entry the writer puts under `key`: 4 MiB that differ from every other key's."""
  return hashlib.sha256(key.encode()).digest() * (ENTRY_BYTES // 32)


_WRITER = f"""
import hashlib, sys
from research.train.compilation import FileCache
cache = FileCache(sys.argv[1])
for i in range(40):
  key = f"k{{i}}"
  cache.put(key, hashlib.sha256(key.encode()).digest() * ({ENTRY_BYTES} // 32))
"""


def test_a_reader_sees_whole_entries_or_none_while_another_process_writes(tmp_path):
  writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], cwd=helpers.ROOT)
  cache, seen = compilation.FileCache(tmp_path), set()
  try:
    while writer.poll() is None or len(seen) < 40:
      for i in range(40):
        value = cache.get(f"k{i}")
        assert value is None or value == _value(f"k{i}"), f"k{i}: {len(value)} of {ENTRY_BYTES} bytes"
        if value is not None:
          seen.add(i)
      assert writer.poll() in (None, 0)
  finally:
    writer.kill()
  assert sorted(os.listdir(tmp_path)) == sorted(f"k{i}-cache" for i in range(40))  # no temporaries left


def test_the_least_recently_used_entries_go_first(tmp_path):
  cache = compilation.FileCache(tmp_path, max_bytes=10_000)
  for key in ("a", "b", "c"):
    cache.put(key, key.encode() * 3000)
    time.sleep(0.02)  # distinct modification times
  assert cache.get("a") == b"a" * 3000  # used: now the most recent
  time.sleep(0.02)
  cache.put("d", b"d" * 3000)  # 12,000 bytes > 10,000: evict down to 9,000, oldest use first
  assert sorted(os.listdir(tmp_path)) == ["a-cache", "c-cache", "d-cache"]
  assert cache.get("b") is None
  assert compilation.FileCache(tmp_path, max_bytes=10_000)._total == 9000  # a new process counts what is there


def test_jax_compiles_into_it_and_reads_it_back(tmp_path):
  before = jax.config.jax_compilation_cache_dir
  try:
    assert compilation.enable(str(tmp_path), tmp_path) == tmp_path
    from jax._src import compilation_cache as jax_cache
    assert isinstance(jax_cache._cache, compilation.FileCache)
    cube = jax.jit(lambda x: x ** 3 + 0.25)
    assert float(cube(jnp.float32(2.0))) == 8.25
    written = [p for p in tmp_path.iterdir() if p.name.startswith("jit__lambda")]
    assert len(written) == 1, sorted(os.listdir(tmp_path))
    assert jax_cache._cache.get(written[0].name.removesuffix("-cache")) == written[0].read_bytes()
  finally:
    if before:  # other tests' runs go on with the session's cache
      compilation.enable(before, tmp_path)
