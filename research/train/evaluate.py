"""Evaluate any checkpoint of a run on a split, exactly as the training loop does."""

from __future__ import annotations

from pathlib import Path

from flax import nnx

from research import metrics, optim, parallel
from research.train import experiment
from research.train.loop import evaluate
from research.train.step import make_steps


def evaluate_checkpoint(workdir: str | Path, step: str | int = "latest", split: str = "test") -> dict:
  """Returns {"step", "split", "metrics": {...}} for `step` ('latest', 'best' or a number) of `workdir`."""
  config, graphdef, state, meta = experiment.restore(workdir, step)
  mesh = parallel.make_mesh(config)
  tx, _ = optim.build(config, 1)
  _, eval_step = make_steps(graphdef, tx, mesh, strategy=config.parallel.strategy, input_key=config.data.input_key)
  summarize = getattr(nnx.merge(graphdef, state.params, state.model_state), "summarize", metrics.summarize)
  results = evaluate(eval_step, state, experiment.load_split(config, split), config, mesh,
                     experiment.preprocessor(config, workdir), summarize)
  return {"step": meta["step"], "split": split, "metrics": results}
