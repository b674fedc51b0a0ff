"""Training throughput: the library's trainer against a hand-written jax.jit loop, Keras 3 and PyTorch.

Every measurement runs in its own subprocess (so peak memory is per system),
systems are interleaved within each repeat, and the table reports medians of
examples/s and ratios against the hand-written loop. The same architecture,
batch size, Adam and float32 are used everywhere; data is already in memory.
Peers that are not installed (keras, torch) are reported as such.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from research.bench.timing import machine, table

# name -> (batch size, input shape, number of classes)
SHAPES = {"mlp": (128, (784,), 10)}
SYSTEMS = ("hand_jax", "trainer", "keras_jax", "torch_eager", "torch_compile")


def _data(model: str, n: int):
  batch, shape, classes = SHAPES[model]
  rng = np.random.default_rng(0)
  return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, classes, n).astype(np.int32)


# --- The systems: each returns examples/s over `steps` steady-state steps (after warm-up). -------------------

def hand_jax(model: str, steps: int) -> float:
  import jax
  import optax
  from flax import nnx

  from research.models.mlp import MLP

  batch, _, classes = SHAPES[model]
  x, y = _data(model, batch * 16)
  net = MLP(784, (512, 256), classes, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(net, nnx.Param)
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)

  def step(params, opt_state, xb, yb):
    def loss_fn(p):
      return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, p)(xb), yb).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(step, donate_argnums=(0, 1))

  def run(n):
    nonlocal params, opt_state
    for i in range(n):
      s = (i % 16) * batch
      params, opt_state, loss = step(params, opt_state, x[s:s + batch], y[s:s + batch])
    loss.block_until_ready()

  run(5)
  start = time.perf_counter()
  run(steps)
  return steps * batch / (time.perf_counter() - start)


def trainer(model: str, steps: int) -> float:
  import tempfile

  from research.registry import DATASETS
  from research.train.loop import train

  batch, _, _ = SHAPES[model]
  x, y = _data(model, batch * 16)
  DATASETS.register("bench")(lambda split: {"image": x, "label": y})
  import ml_collections

  config = ml_collections.ConfigDict(json.loads(_trainer_config(model, batch, steps)))
  workdir = tempfile.mkdtemp(prefix="research-bench-")
  train(config, workdir)
  rows = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
  rates = [r["perf/examples_per_sec"] for r in rows if "perf/examples_per_sec" in r]
  return statistics.median(rates[1:])  # the first interval includes compilation


def _trainer_config(model: str, batch: int, steps: int) -> str:
  import importlib.util

  root = Path(__file__).resolve().parents[2]
  spec = importlib.util.spec_from_file_location("mnist_mlp", root / "configs" / "mnist_mlp.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.data.update(dict(name="bench", preprocess="", batch_size=batch, eval_batch_size=batch, shuffle=True))
  config.schedule.name = "constant"
  interval = max(steps // 4, 1)
  config.train.update(dict(steps=steps + interval, epochs=0, log_every=interval, eval_every=0))
  config.checkpoint.every = 0
  config.compilation_cache = "off"
  return config.to_json()


def keras_jax(model: str, steps: int) -> float:
  import os

  os.environ["KERAS_BACKEND"] = "jax"
  import keras

  batch, _, classes = SHAPES[model]
  x, y = _data(model, batch * 16)
  net = keras.Sequential([keras.Input((784,)), keras.layers.Dense(512, activation="relu"),
                          keras.layers.Dense(256, activation="relu"), keras.layers.Dense(classes)])
  net.compile(optimizer=keras.optimizers.Adam(1e-3),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  net.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # compile, warm up
  epochs = max(steps // 16, 1)
  start = time.perf_counter()
  net.fit(x, y, batch_size=batch, epochs=epochs, verbose=0)
  return epochs * 16 * batch / (time.perf_counter() - start)


def _torch(model: str, steps: int, compiled: bool) -> float:
  import torch

  batch, _, classes = SHAPES[model]
  x, y = _data(model, batch * 16)
  xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
  net = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
                            torch.nn.ReLU(), torch.nn.Linear(256, classes))
  opt = torch.optim.Adam(net.parameters(), 1e-3)
  loss_fn = torch.nn.CrossEntropyLoss()

  def step(xb, yb):
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(net(xb), yb)
    loss.backward()
    opt.step()
    return loss

  if compiled:
    step = torch.compile(step)

  def run(n):
    for i in range(n):
      s = (i % 16) * batch
      step(xt[s:s + batch], yt[s:s + batch])

  run(5)
  start = time.perf_counter()
  run(steps)
  return steps * batch / (time.perf_counter() - start)


def torch_eager(model: str, steps: int) -> float:
  return _torch(model, steps, compiled=False)


def torch_compile(model: str, steps: int) -> float:
  return _torch(model, steps, compiled=True)


# --- The harness. -----------------------------------------------------------------------------------------

def _measure(system: str, model: str, steps: int) -> dict:
  """Runs one measurement in a fresh process; returns {"examples_per_sec", "peak_mb"} or {"error"}."""
  code = ("import json, sys; from research.bench import train, timing; "
          f"rate = train.{system}({model!r}, {steps}); "
          "print(json.dumps({'examples_per_sec': rate, 'peak_mb': timing.peak_rss_mb()}))")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
  if done.returncode != 0:
    last = (done.stderr.strip().splitlines() or ["failed"])[-1]
    return {"error": "not installed" if "ModuleNotFoundError" in last else last[:80]}
  return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> str:
  steps, repeats = (20, 1) if quick else (400, 3)
  rows = []
  for model in SHAPES:
    results: dict[str, list[dict]] = {s: [] for s in SYSTEMS}
    for _ in range(repeats):
      for system in SYSTEMS:  # interleaved: a slow moment of the machine hits every system alike
        results[system].append(_measure(system, model, steps))
    base = statistics.median(r["examples_per_sec"] for r in results["hand_jax"])
    for system in SYSTEMS:
      good = [r for r in results[system] if "examples_per_sec" in r]
      if not good:
        rows.append([model, system, results[system][0]["error"], "", ""])
        continue
      rate = statistics.median(r["examples_per_sec"] for r in good)
      peak = max(r["peak_mb"] for r in good)
      rows.append([model, system, f"{rate:,.0f}", f"{rate / base:.2f}x", f"{peak:,.0f}"])
  return (f"Steady-state training throughput, examples/s, median of {repeats} interleaved runs of {steps} steps "
          f"each in separate processes; Adam, float32, data in memory.\nMachine: {machine()}.\n\n"
          + table(["model", "system", "examples/s", "vs hand-written jax.jit", "peak RSS MB"], rows))
