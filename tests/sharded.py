"""Tiny models of three families built from config dicts, trained a few steps on a mesh: shared by the sharding
tests (no dataset is read)."""

from __future__ import annotations

import jax
import numpy as np

from research import config as config_lib
from research import parallel, sharding
from research.train import experiment
from research.train.step import make_steps, named

SEQ, VOCAB, BATCH = 16, 64, 16
MODELS = {
    "gpt": dict(name="gpt", vocab_size=VOCAB, block_size=SEQ, num_layers=2, num_heads=4, embed_dim=32, mlp_ratio=4,
                dropout=0.0, tie_embeddings=True, sample_prompt_length=4, sample_tokens=0, sample_temperature=1.0,
                sample_top_k=0),
    "transformer": dict(name="transformer", vocab_size=VOCAB, num_classes=4, dim=32, num_heads=4, num_layers=2,
                        mlp_dim=64, dropout=0.0, positions="learned", pooling="mean"),
    "cnn": dict(name="cnn", channels=(8, 16), kernel_size=3, hidden_size=32, num_classes=4, dropout=0.0,
                bn_momentum=0.9),
}
INPUT_KEYS = {"gpt": "tokens", "transformer": "tokens", "cnn": "image"}


def config(family: str, data: int = -1, fsdp: int = 1, tensor: int = 1, **mesh):
  c = config_lib.defaults()
  c.model = dict(MODELS[family])
  c.data.input_key = INPUT_KEYS[family]
  c.mesh.update(data=data, fsdp=fsdp, tensor=tensor, **mesh)
  c.optimizer.update(name="adamw", learning_rate=1e-2, weight_decay=0.01, clip_norm=1.0)
  c.schedule.update(name="constant", warmup_steps=0)
  return c


def batch(family: str, seed: int = 0) -> dict[str, np.ndarray]:
  """A random batch of BATCH rows for `family`."""
  rng = np.random.default_rng(seed)
  if family == "gpt":
    return {"tokens": rng.integers(1, VOCAB, (BATCH, SEQ + 1)).astype(np.int32)}
  labels = rng.integers(0, 4, BATCH).astype(np.int32)
  if family == "transformer":
    return {"tokens": rng.integers(1, VOCAB, (BATCH, SEQ)).astype(np.int32), "label": labels}
  return {"image": rng.normal(size=(BATCH, 8, 8, 1)).astype(np.float32), "label": labels}


def factory(c):
  """A function that builds the model of `c` (experiment.model_factory) for `batch`'s shapes."""
  return experiment.model_factory(c, batch(c.model.name), lambda b: b)


def build(c, mesh, steps: int = 10):
  """(graphdef, TrainState placed on `mesh` by the config's rules, optimizer) of a fresh model."""
  graphdef, state, tx, _ = experiment.build_state(c, factory(c), steps, mesh)
  return graphdef, state, tx


def compile_step(c, devices=None, steps: int = 10, start=None):
  """(the train step of `c` compiled for its mesh over `devices`, a fresh TrainState, `batch` placed on the mesh).
  `start`, a TrainState built for another mesh of the same model, is placed on this one by the config's rules
  instead of initializing anew (initializing compiles a program per mesh: ~2 s of one CPU)."""
  mesh = parallel.make_mesh(c, devices)
  if start is None:
    graphdef, state, tx = build(c, mesh, steps)
  else:
    (graphdef, state, tx), rules = start, sharding.rules(c)
    state = jax.device_put(jax.device_get(state), sharding.state_shardings(state, mesh, rules))
  train_step, _ = make_steps(graphdef, tx, mesh, strategy=c.parallel.strategy, input_key=c.data.input_key,
                             state_sharding=sharding.of(state))
  placed = jax.device_put(batch(c.model.name), parallel.batch_sharding(mesh))
  return train_step.lower(state, placed).compile(), state, placed


def train(c, devices=None, steps: int = 10, start=None) -> dict:
  """Trains `steps` steps on one batch on the mesh of `c` over `devices` (from `start`, as compile_step takes it):
  {"losses": per step, "state": the last, "state_bytes": per device, XLA's compiled arguments less the batch's}."""
  compiled, state, placed = compile_step(c, devices, steps, start)
  batch_bytes = sum(x.addressable_shards[0].data.nbytes for x in placed.values())
  losses = []
  for _ in range(steps):
    state, metrics = compiled(state, placed)
    losses.append(named(metrics)["loss"])  # (waiting on each step: see DESIGN.md on XLA:CPU deadlocks)
  state_bytes = compiled.memory_analysis().argument_size_in_bytes - batch_bytes
  return {"losses": losses, "state": state, "state_bytes": state_bytes}
