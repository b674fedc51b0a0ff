"""Rematerialization of a model's blocks: which activations the backward pass keeps and which it recomputes.

`config.remat` picks the policy of every block of the Transformer and the GPT:

| policy | kept for the backward pass | cost |
|---|---|---|
| `none` | every intermediate activation | the most memory, no recomputation |
| `full` | only each block's input | each block's forward pass runs twice |
| `dots` | the outputs of the weight matmuls | elementwise work, layer norms and attention run twice |

(`dots` is JAX's `dots_with_no_batch_dims_saveable`: the products of activations with weights are kept, the
attention products, which have batch dimensions, are not.)

The numbers are the same under every policy (tests/test_remat.py holds loss and gradients equal); the compiled
step's memory goes down. A model with blocks has a `remat` attribute (a plain string, so it is part of the
graph definition and a jitted function of the model traces again when it changes); `configure(model, policy)`
sets it, as research/train/experiment.py does from the config, and the model calls each block through `call`.
"""

from __future__ import annotations

import jax
from flax import nnx

from research.errors import ConfigError

ATTRIBUTE = "remat"
POLICIES = {"none": None, "full": jax.checkpoint_policies.nothing_saveable,
            "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def check(policy: str) -> None:
  if policy not in POLICIES:
    raise ConfigError(f"remat={policy!r}; choose one of {', '.join(POLICIES)} (none keeps every activation).")


def configure(model: nnx.Module, policy: str) -> nnx.Module:
  """Sets the remat policy of every module of `model` that has one; returns `model`."""
  check(policy)
  for _, module in nnx.iter_modules(model):
    if hasattr(module, ATTRIBUTE):
      setattr(module, ATTRIBUTE, policy)
  return model


def call(policy: str, block: nnx.Module, x, *args, train: bool, rngs: nnx.Rngs | None, **kwargs):
  """`block(x, *args, train=train, rngs=rngs, **kwargs)`, its activations kept by `policy` when training.

  Outside training nothing is differentiated, so the block is called as is.
  """
  if policy == "none" or not train:
    return block(x, *args, train=train, rngs=rngs, **kwargs)

  def run(block, x, rngs, *args):
    return block(x, *args, train=train, rngs=rngs, **kwargs)

  return nnx.remat(run, policy=POLICIES[policy])(block, x, rngs, *args)
