"""Input pipeline and compile time for every zoo config that has data offline.

For each config, two short real training runs (`scripts/train.py`, the config
as shipped, stopped after a few dozen steps) share one compilation cache
directory: the first compiles, the second reads the cache. From their logs:
  - data wait: the share of the step loop's wall time spent waiting for the next
    batch (`perf/data_wait_fraction`, logged by the train loop; target < 2%);
  - the first step's wall time, cold and with the cache (`perf/first_step_sec`).
Then the input pipeline runs alone (shuffled gathers and transfer to device, as
in training) to measure the examples/s it can supply, against the examples/s
the train step consumes (target >= 5x). Host preprocessing (tokenization,
normalization) runs once when the pipeline is built, for splits whose result
fits in memory (research/data/pipeline.py): its time is reported on its own.
Augmentation runs on device inside the train step, so its cost is part of the
consumption rate.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from research.bench.timing import machine, table

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ("mnist_mlp", "mnist_cnn", "fashion_mnist_resnet", "mnist_vae", "rotten_tomatoes_lstm",
           "rotten_tomatoes_transformer", "shakespeare_gpt")


def _train(config: str, workdir: Path, cache: Path, steps: int) -> list[dict]:
  """Trains `steps` steps in a fresh process; returns its metrics.jsonl rows."""
  log_every = max(steps // 4, 1)
  command = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config", config, "--workdir", str(workdir),
             f"--config.train.stop_after_steps={steps}", f"--config.train.log_every={log_every}",
             f"--config.compilation_cache={cache}", "--config.checkpoint.every=0"]
  done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
  if done.returncode != 0:
    raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
  return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def _supply_rate(config_spec: str, workdir: Path, batches: int) -> tuple[float, float]:
  """(examples/s the training input pipeline delivers on its own, seconds to build it), fitted state read from
  `workdir`."""
  import jax

  from research import config as config_lib
  from research import parallel
  from research.data.pipeline import Pipeline
  from research.train import experiment

  config = config_lib.load(config_spec)
  mesh = parallel.make_mesh(config)
  train_arrays = experiment.load_split(config, "train")
  building = time.perf_counter()
  pipeline = Pipeline(train_arrays, batch_size=config.data.batch_size, sharding=parallel.batch_sharding(mesh),
                      preprocess=experiment.preprocessor(config, workdir), seed=config.seed,
                      shuffle=config.data.shuffle)
  built = time.perf_counter() - building
  with contextlib.closing(pipeline.iterate(0, batches + 2)) as source:
    next(source), next(source)  # thread start-up
    start = time.perf_counter()
    for batch in source:
      last = batch
    jax.block_until_ready(last)  # on one CPU device the batches are host arrays: nothing to wait for
    return batches * config.data.batch_size / (time.perf_counter() - start), built


def measure(name: str, steps: int, supply_batches: int, root: Path) -> list[object]:
  config = str(ROOT / "configs" / f"{name}.py")
  cache = root / f"{name}-cache"
  cold = _train(config, root / f"{name}-cold", cache, steps)
  warm = _train(config, root / f"{name}-warm", cache, steps)
  logged = [r for r in cold + warm if "perf/data_wait_fraction" in r]
  steady = [r for r in logged if r["step"] > steps // 4]  # the first interval of each run holds the compile
  wait = statistics.median(r["perf/data_wait_fraction"] for r in steady)
  consumed = statistics.median(r["perf/examples_per_sec"] for r in steady)
  supplied, built = _supply_rate(config, root / f"{name}-cold", supply_batches)
  first = lambda rows: next(r["perf/first_step_sec"] for r in rows if "perf/first_step_sec" in r)
  return [name, f"{100 * wait:.2f}%", f"{consumed:,.0f}", f"{supplied:,.0f}", f"{supplied / consumed:.1f}x",
          f"{built:.2f}", f"{first(cold):.2f}", f"{first(warm):.2f}", f"{1 - first(warm) / first(cold):.0%}"]


def run(quick: bool = False, configs: tuple[str, ...] = CONFIGS) -> str:
  steps, supply_batches = (8, 4) if quick else (80, 100)
  if quick:
    configs = ("mnist_mlp",)
  with tempfile.TemporaryDirectory(prefix="research-bench-pipeline-") as root:
    rows = [measure(name, steps, supply_batches, Path(root)) for name in configs]
  return (f"Each zoo config as shipped, two runs of {steps} steps sharing a compilation cache (cold, then warm); "
          f"data wait and consumption are medians over both runs' log intervals after the first; supply is "
          f"the input pipeline alone over {supply_batches} batches.\nMachine: {machine()}.\n\n"
          + table(["config", "data wait (target < 2%)", "step consumes ex/s", "pipeline supplies ex/s",
                   "supply / consumption (target >= 5x)", "pipeline built in s", "first step s, cold",
                   "first step s, cached",
                   "saved by the cache"], rows))
