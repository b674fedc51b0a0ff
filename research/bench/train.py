"""Training throughput: the library's trainer against a hand-written jax.jit loop, Keras 3 and PyTorch.

Every measurement runs in its own subprocess (so peak memory is per system),
systems are interleaved within each repeat, and the table reports medians of
examples/s and ratios against the hand-written loop. The same architecture,
batch size, Adam and float32 are used everywhere; data is already in memory.
Peers that are not installed (keras, torch) are reported as such.

With `compute_dtype="bfloat16"` (`scripts/benchmark.py train_bf16`) every
system trains in mixed precision as its users would switch it on: the library
by `config.compute_dtype` (research/models/precision.py), Keras by its
`mixed_bfloat16` policy, PyTorch by `torch.autocast` to bfloat16.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from research import host_memory
from research.bench.timing import machine, table

# The three architectures of the performance issue. `model` is the library's config.model; peers.py builds
# the same layers in Keras and PyTorch. `input_shape` excludes the batch.
SPECS = {
    "mlp": dict(batch=128, input_shape=(784,), input_key="image",
                model=dict(name="mlp", hidden_sizes=[512, 256], num_classes=10, dropout=0.0, activation="relu")),
    "cnn": dict(batch=128, input_shape=(28, 28, 1), input_key="image",
                model=dict(name="cnn", channels=[32, 64], kernel_size=3, hidden_size=128, num_classes=10,
                           dropout=0.0, bn_momentum=0.9)),
    "transformer": dict(batch=32, input_shape=(128,), input_key="tokens",
                        model=dict(name="transformer", vocab_size=8000, num_classes=2, dim=128, num_heads=4,
                                   num_layers=2, mlp_dim=512, dropout=0.0, attention_dropout=0.0,
                                   positions="learned", pooling="mean", max_length=128, pad_id=0),
                        xla_profile="fused_reductions"),  # as the zoo's Transformer configs
}
SYSTEMS = ("hand_jax", "trainer", "keras_jax", "torch_eager", "torch_compile")
# Peers run as their users get them: without the library's XLA flags and malloc settings (research/__init__.py).
STOCK = {"RESEARCH_XLA_DEFAULTS": "off", "RESEARCH_MALLOC_DEFAULTS": "0"}
PRECISION = {"float32": "float32",
             "bfloat16": "bfloat16 mixed precision (library: config.compute_dtype; Keras: the mixed_bfloat16 policy; "
                         "PyTorch: torch.autocast)"}
BATCHES = 16  # distinct batches held in memory, cycled through
FAST_PATHS = True  # the models' fast formulations (research/models/layers/fast_paths.py); `measure` sets it


def _data(name: str) -> tuple[np.ndarray, np.ndarray]:
  spec = SPECS[name]
  rng = np.random.default_rng(0)
  shape = (spec["batch"] * BATCHES, *spec["input_shape"])
  if spec["input_key"] == "tokens":  # no padding id (0): every token is real
    x = rng.integers(1, spec["model"]["vocab_size"], shape).astype(np.int32)
  else:
    x = rng.standard_normal(shape).astype(np.float32)
  return x, rng.integers(0, spec["model"]["num_classes"], shape[0]).astype(np.int32)


# --- The systems: each returns examples/s over `steps` steady-state steps (after warm-up). -------------------

def _model(name: str, compute_dtype: str):
  """The library's model for `name`, built from its config.model in `compute_dtype`; and the benchmark's data."""
  import jax
  import ml_collections
  from flax import nnx

  from research import models  # noqa: F401  (registers the zoo)
  from research.models import precision
  from research.models.layers import fast_paths
  from research.registry import MODELS
  from research.train import experiment

  spec = SPECS[name]
  x, y = _data(name)
  make = lambda: MODELS.get(spec["model"]["name"])(ml_collections.ConfigDict(spec["model"]), x[:2], nnx.Rngs(0))
  # Initialized by one compiled program, as the trainer's state is: op by op, every initializer compiled on its own.
  graphdef, _ = nnx.split(nnx.eval_shape(make))
  net = nnx.merge(graphdef, jax.jit(lambda: nnx.state(make()), compiler_options=experiment.init_compiler_options())())
  return precision.set_compute_dtype(fast_paths.configure(net, FAST_PATHS), compute_dtype), x, y


def hand_jax(name: str, steps: int, compute_dtype: str = "float32") -> float:
  """The minimal loop: the library's model, value_and_grad, Adam, one jitted step with donated state."""
  run = hand_loop(name, compute_dtype)
  run(5)
  start = time.perf_counter()
  run(steps)
  return steps * SPECS[name]["batch"] / (time.perf_counter() - start)


def hand_loop(name: str, compute_dtype: str = "float32"):
  """`run(n)`: n steps of the hand-written loop, cycling through the `BATCHES` batches; blocks until done."""
  import jax
  import optax
  from flax import nnx

  spec = SPECS[name]
  net, x, y = _model(name, compute_dtype)
  graphdef, params, rest = nnx.split(net, nnx.Param, ...)
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)

  def step(params, opt_state, rest, xb, yb):
    def loss_fn(p):
      model = nnx.merge(graphdef, p, rest, copy=True)
      logits = model(xb, train=True).astype(jax.numpy.float32)  # (a no-op unless layers compute in bfloat16)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
      return loss, nnx.state(model, nnx.Not(nnx.Param))

    (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, rest, loss

  step = jax.jit(step, donate_argnums=(0, 1, 2))
  batch = spec["batch"]

  def run(n):
    nonlocal params, opt_state, rest
    for i in range(n):
      s = (i % BATCHES) * batch
      params, opt_state, rest, loss = step(params, opt_state, rest, x[s:s + batch], y[s:s + batch])
    loss.block_until_ready()

  return run


def forward_jax(name: str, steps: int, compute_dtype: str = "float32") -> float:
  """Inference: the library's model in eval mode, one jitted forward pass per batch."""
  import jax
  from flax import nnx

  net, x, _ = _model(name, compute_dtype)
  graphdef, state = nnx.split(net)
  forward = jax.jit(lambda state, xb: nnx.merge(graphdef, state)(xb))
  batch = SPECS[name]["batch"]

  def run(n):
    for i in range(n):
      s = (i % BATCHES) * batch
      out = forward(state, x[s:s + batch])
    out.block_until_ready()

  run(5)
  start = time.perf_counter()
  run(steps)
  return steps * batch / (time.perf_counter() - start)


def trainer(name: str, steps: int, compute_dtype: str = "float32") -> float:
  """research.train.loop.train on the same arrays, read back from its own perf/examples_per_sec log."""
  import tempfile

  from research.registry import DATASETS
  from research.train.loop import train

  spec = SPECS[name]
  x, y = _data(name)
  DATASETS.register("bench")(lambda split: {spec["input_key"]: x, "label": y})
  workdir = tempfile.mkdtemp(prefix="research-bench-")
  train(trainer_config(name, steps, compute_dtype), workdir)
  rows = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
  rates = [r["perf/examples_per_sec"] for r in rows if "perf/examples_per_sec" in r]
  return statistics.median(rates[1:])  # the first interval includes compilation


def trainer_config(name: str, steps: int, compute_dtype: str = "float32"):
  """The library's defaults with the benchmark's model, data, Adam at a constant 1e-3 and no checkpoints."""
  from research import config as config_lib
  spec = SPECS[name]
  config = config_lib.defaults()
  config.data.update(dict(name="bench", input_key=spec["input_key"], preprocess="", augment="",
                          batch_size=spec["batch"], eval_batch_size=spec["batch"], shuffle=True))
  config.model = dict(spec["model"])
  config.optimizer.update(dict(name="adam", learning_rate=1e-3))
  config.schedule.update(dict(name="constant", warmup_steps=0))
  interval = max(steps // 4, 1)
  config.train.update(dict(steps=steps + interval, epochs=0, log_every=interval, eval_every=0))
  config.checkpoint.every = 0
  config.compilation_cache = "off"
  config.compute_dtype = compute_dtype
  config.fast_paths = FAST_PATHS  # as `measure` set it for this process
  config.xla_profile = spec.get("xla_profile", "default")  # `measure` applied it (train() runs after JAX started)
  return config


def keras_jax(name: str, steps: int, compute_dtype: str = "float32") -> float:
  from research.bench import peers

  return peers.keras_jax(name, SPECS[name], *_data(name), steps, compute_dtype)


def torch_eager(name: str, steps: int, compute_dtype: str = "float32") -> float:
  from research.bench import peers

  return peers.torch_train(name, SPECS[name], *_data(name), steps, compiled=False, compute_dtype=compute_dtype)


def torch_compile(name: str, steps: int, compute_dtype: str = "float32") -> float:
  from research.bench import peers

  return peers.torch_train(name, SPECS[name], *_data(name), steps, compiled=True, compute_dtype=compute_dtype)


# --- The harness. -----------------------------------------------------------------------------------------

def measure(system: str, model: str, steps: int, *, env: dict | None = None, fast_paths: bool = True,
            compute_dtype: str = "float32") -> dict:
  """Runs one measurement in a fresh process (with `env` added to the environment, e.g. XLA_FLAGS);
  returns {"examples_per_sec", "peak_mb"} or {"error"}."""
  code = ("import json, sys; from research.bench import train, timing; "
          f"train.FAST_PATHS = {fast_paths}; "
          f"rate = train.{system}({model!r}, {steps}, {compute_dtype!r}); "
          "print(json.dumps({'examples_per_sec': rate, 'peak_mb': timing.peak_rss_mb()}))")
  if system in ("keras_jax", "torch_eager", "torch_compile"):
    own = STOCK
  elif system == "forward_jax":  # inference: the profile of `import research`
    own = {"RESEARCH_XLA_DEFAULTS": "default"}
  else:
    own = training_profile(model)
  return run_python(code, {**own, **(env or {})})


def training_profile(model: str) -> dict[str, str]:
  """The environment for training steps: the XLA profile scripts/train.py applies for the spec's xla_profile."""
  return {"RESEARCH_XLA_DEFAULTS": SPECS[model].get("xla_profile", "default")}


def run_python(code: str, env: dict[str, str]) -> dict:
  """Runs `code` in a fresh Python (with `env` added); the JSON of its last output line, or {"error"}."""
  code = f"from research import host_memory, xla_flags; xla_flags.apply(); host_memory.apply(); {code}"
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                        env=host_memory.environment({**os.environ, **env}))  # tunables: read at start-up
  if done.returncode != 0:
    last = (done.stderr.strip().splitlines() or ["failed"])[-1]
    return {"error": "not installed" if "ModuleNotFoundError" in last else last[:80]}
  return json.loads(done.stdout.strip().splitlines()[-1])


def run(quick: bool = False, models: tuple[str, ...] = tuple(SPECS), compute_dtype: str = "float32") -> str:
  """The table. `quick` checks the harness, not the numbers: a few steps of every system on the MLP (each
  measurement is a process of its own: ~5-14 s here). The CNN's and the Transformer's hand-written steps are
  exercised by the cpu section's quick run, the trainer on them by the zoo's smoke tests."""
  # 5 repeats: on a shared 2-core VM single runs of one system differ by up to +-15%; medians of 3 still put the
  # trainer at 0.87x of the hand-written loop where 7 interleaved pairs gave 1.01x.
  steps, repeats = (6, 1) if quick else (200, 5)
  if quick:
    models = ("mlp",)
  rows = []
  for model in models:
    systems = SYSTEMS
    results: dict[str, list[dict]] = {s: [] for s in systems}
    for _ in range(repeats):
      for system in systems:  # interleaved: a slow moment of the machine hits every system alike
        results[system].append(measure(system, model, steps, compute_dtype=compute_dtype))
    rate = {s: statistics.median(r["examples_per_sec"] for r in results[s] if "examples_per_sec" in r)
            for s in systems if any("examples_per_sec" in r for r in results[s])}
    for system in systems:
      if system not in rate:
        rows.append([model, system, results[system][0]["error"], "", "", ""])
        continue
      peak = max(r["peak_mb"] for r in results[system] if "peak_mb" in r)
      ratio = lambda base: f"{rate[system] / rate[base]:.2f}x" if base in rate else "n/a"
      rows.append([model, system, f"{rate[system]:,.0f}", ratio("hand_jax"), ratio("torch_eager"), f"{peak:,.0f}"])
  shapes = "; ".join(f"{m}: batch {SPECS[m]['batch']}, input {SPECS[m]['input_shape']}" for m in models)
  return (f"Steady-state training throughput, examples/s, median of {repeats} interleaved runs of {steps} steps "
          f"each in separate processes; Adam (PyTorch: fused Adam), {PRECISION[compute_dtype]}, data in memory "
          f"({shapes}).\n"
          f"Machine: {machine()}.\n\n"
          + table(["model", "system", "examples/s", "vs hand-written jax.jit", "vs PyTorch eager", "peak RSS MB"],
                  rows))
