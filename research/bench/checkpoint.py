"""Checkpoint benchmark: how long a save blocks the loop, and save/restore throughput vs raw writes.

A model of >= 50M parameters (an MLP 784-4096x4-10, 53.6M params; with Adam's
two moments the checkpoint holds ~640 MB) is trained for a few steps; then:
- blocked: the time `Checkpointer.save` holds the loop (it hashes every array
  for the checksums, the async save copies device arrays to host memory, then
  it returns), against one train step (target: less than one step);
- checksums: the hashing alone;
- save throughput: checkpoint bytes / time until the write is complete (target:
  at least 0.5x raw);
- restore throughput: the same bytes restored onto the device, checksums verified;
- raw: the same arrays written with `numpy.save` (+ fsync) to the same disk.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

from research import config as config_lib
from research import parallel
from research.bench.timing import machine, table
from research.checkpoint import Checkpointer, checksums, to_string_tree
from research.models.mlp import MLP
from research.train import state as state_lib
from research.train.step import make_steps


def _nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def run(quick: bool = False, directory: str | None = None) -> str:
  hidden = (256, 256) if quick else (4096, 4096, 4096, 4096)
  batch_size, repeats = (32, 2) if quick else (32, 3)
  mesh = parallel.make_mesh(config_lib.defaults(), devices=jax.devices()[:1])
  model = MLP(784, hidden, 10, rngs=nnx.Rngs(0))
  tx = optax.adam(1e-4)
  graphdef, state = state_lib.create(model, tx, 0)
  state = jax.device_put(state, parallel.replicated(mesh))
  params = sum(x.size for x in jax.tree.leaves(state.params))
  train_step, _ = make_steps(graphdef, tx, mesh, strategy="auto", input_key="image")
  rng = np.random.default_rng(0)
  batch = jax.device_put({"image": rng.standard_normal((batch_size, 784), np.float32),
                          "label": rng.integers(0, 10, batch_size).astype(np.int32)}, parallel.batch_sharding(mesh))
  for _ in range(2):  # compile, warm up
    state, m = train_step(state, batch)
  jax.block_until_ready(m)
  step_times = []
  for _ in range(5):
    start = time.perf_counter()
    state, m = train_step(state, batch)
    jax.block_until_ready(m)
    step_times.append(time.perf_counter() - start)
  step_time = statistics.median(step_times)

  hashing = []
  for _ in range(repeats):
    start = time.perf_counter()
    checksums(to_string_tree(state))
    hashing.append(time.perf_counter() - start)

  root = Path(tempfile.mkdtemp(prefix="research-ckpt-bench-", dir=directory))
  size = _nbytes(state)
  blocked, saves, restores, raws = [], [], [], []
  try:
    for rep in range(repeats):
      ckpt = Checkpointer(root / f"run{rep}", every=1, keep=2)
      start = time.perf_counter()
      ckpt.save(1, state, {"epoch": 0, "index": 1}, force=True)
      blocked.append(time.perf_counter() - start)
      ckpt.wait()
      saves.append(time.perf_counter() - start)
      start = time.perf_counter()
      restored, _ = ckpt.restore(state)
      jax.block_until_ready(restored)
      restores.append(time.perf_counter() - start)
      ckpt.close()
      del restored
      host = jax.device_get(state)
      start = time.perf_counter()
      raw_dir = root / f"raw{rep}"
      raw_dir.mkdir()
      for i, leaf in enumerate(jax.tree.leaves(host)):
        with open(raw_dir / f"{i}.npy", "wb") as f:
          np.save(f, np.asarray(leaf))
          f.flush()
          os.fsync(f.fileno())
      raws.append(time.perf_counter() - start)
  finally:
    shutil.rmtree(root, ignore_errors=True)

  mb = size / 2**20
  block, save, restore, raw, hashed = (statistics.median(v) for v in (blocked, saves, restores, raws, hashing))
  met = lambda ok: "met" if ok else "MISSED"
  rows = [
      ["train step (batch 32)", f"{step_time * 1e3:.1f} ms", "1.00x step", ""],
      ["loop blocked by `save`", f"{block * 1e3:.1f} ms", f"{block / step_time:.2f}x step",
       f"< 1x step: {met(block < step_time)}"],
      ["of which checksums (xxh3-64)", f"{hashed * 1e3:.1f} ms = {mb / hashed:,.0f} MB/s",
       f"{hashed / step_time:.2f}x step", ""],
      ["save, until complete", f"{save:.2f} s = {mb / save:,.0f} MB/s", f"{raw / save:.2f}x raw",
       f">= 0.5x raw: {met(raw / save >= 0.5)}"],
      ["restore onto device, verified", f"{restore:.2f} s = {mb / restore:,.0f} MB/s", f"{raw / restore:.2f}x raw",
       ""],
      ["raw `numpy.save` + fsync", f"{raw:.2f} s = {mb / raw:,.0f} MB/s", "1.00x raw", ""],
  ]
  return (f"Model: MLP 784-{'-'.join(map(str, hidden))}-10, {params / 1e6:.1f}M parameters; checkpoint "
          f"(params + Adam moments) {mb:,.0f} MB; median of {repeats}.\nMachine: {machine()}.\n\n"
          + table(["measure", "time", "ratio", "target"], rows))
