"""Mixed precision: a model's layers compute in bfloat16 while its parameters stay float32.

`config.compute_dtype = "bfloat16"` sets the computation dtype (`dtype`) of
every Flax layer of the built model that has one (Linear, Conv, Embed,
LayerNorm, BatchNorm, the RNN cells): each layer casts its float32 parameters
and its input to bfloat16 and computes in bfloat16. What stays float32:
  - parameters, gradients and the optimizer state (the casts are differentiated,
    so gradients reach the float32 parameters);
  - normalization statistics (Flax computes LayerNorm and BatchNorm statistics
    in float32) and BatchNorm's running averages;
  - the attention softmax (research/models/layers/attention_core.py) and the
    losses: the logits are cast to float32 before any log-softmax.
bfloat16 keeps float32's exponent range, so no loss scaling is needed (float16
would need it, and is not offered). The training loop applies the setting;
evaluation of a finished run, export and serving build the model in float32
from the same float32 parameters.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from research.errors import ConfigError

COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}  # None: each layer's default (float32 here)


def check(name: str) -> None:
  if name not in COMPUTE_DTYPES:
    raise ConfigError(f"compute_dtype={name!r}; choose one of {', '.join(COMPUTE_DTYPES)} "
                      f"(bfloat16: mixed precision, parameters stay float32).")


def set_compute_dtype(model: nnx.Module, name: str) -> nnx.Module:
  """Sets the computation dtype of every layer of `model` that has one (in place); returns the model."""
  check(name)
  for _, module in nnx.iter_modules(model):
    if hasattr(module, "dtype") and hasattr(module, "param_dtype"):  # Flax's layers with a computation dtype
      module.dtype = COMPUTE_DTYPES[name]
  return model
