"""Accuracy on the real test set and latency, for an artifact's runner (a function of numpy inputs)."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

Runner = Callable[..., list[np.ndarray]]


def accuracy(run: Runner, inputs: Sequence[np.ndarray], labels: np.ndarray, batch_size: int = 1000) -> float:
  """Top-1 accuracy of the first output (class scores) over all of `labels`, run in slices of `batch_size`."""
  correct = 0
  for start in range(0, len(labels), batch_size):
    scores = run(*(x[start:start + batch_size] for x in inputs))[0]
    correct += int(np.sum(np.argmax(scores, axis=-1) == labels[start:start + batch_size]))
  return correct / len(labels)


def latency(run: Runner, inputs: Sequence[np.ndarray], *, warmup: int = 3, iterations: int = 100,
            budget_s: float = 1.0) -> dict:
  """Wall-clock milliseconds per call on this machine: p50 and p99 over up to `iterations` calls within ~`budget_s`."""
  for _ in range(warmup):
    run(*inputs)
  times, deadline = [], time.perf_counter() + budget_s
  while len(times) < iterations and (len(times) < 5 or time.perf_counter() < deadline):
    start = time.perf_counter()
    run(*inputs)
    times.append(time.perf_counter() - start)
  ms = np.asarray(times) * 1e3
  return {"p50": round(float(np.percentile(ms, 50)), 4), "p99": round(float(np.percentile(ms, 99)), 4),
          "calls": len(times)}


def latencies(run: Runner, batches: Sequence[Sequence[np.ndarray]]) -> dict:
  """{batch size: latency} for each batch."""
  return {str(len(b[0])): latency(run, b) for b in batches}
