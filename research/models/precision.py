"""Mixed precision: matrix products take bfloat16 operands while parameters stay float32.

`config.compute_dtype = "bfloat16"` applies one of two recipes to the built
model, chosen by the backend:

  - `activations` (GPUs, TPUs): sets the computation dtype (`dtype`) of every
    Flax layer that has one (Linear, Conv, Embed, LayerNorm, BatchNorm, the RNN
    cells). Each layer casts its float32 parameters and its input to bfloat16
    and computes in bfloat16, so activations take half the memory and bandwidth.
  - `matmul_operands` (CPUs): every Linear layer's product takes bfloat16
    operands into a float32 result, forward and backward
    (research/models/layers/bf16_matmul.py); activations, convolutions and
    everything else (a GPT's tied output embedding too) stay float32. On CPUs
    with bfloat16 dot units XLA:CPU runs such products ~3x faster than float32
    ones, while bfloat16 activations made whole steps slower (bfloat16 results
    and elementwise work run at float32 speed or below) and convolutions
    gained nothing.

Both keep float32:

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

import jax
import jax.numpy as jnp
from flax import nnx

from research.errors import ConfigError
from research.models.layers import bf16_matmul

COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}  # None: each layer's default (float32 here)
RECIPES = ("activations", "matmul_operands")


def check(name: str) -> None:
  if name not in COMPUTE_DTYPES:
    raise ConfigError(f"compute_dtype={name!r}; choose one of {', '.join(COMPUTE_DTYPES)} "
                      f"(bfloat16: mixed precision, parameters stay float32).")


def default_recipe() -> str:
  """The bfloat16 recipe for JAX's default backend: `matmul_operands` on CPUs, `activations` elsewhere."""
  return "matmul_operands" if jax.default_backend() == "cpu" else "activations"


def set_compute_dtype(model: nnx.Module, name: str, recipe: str | None = None) -> nnx.Module:
  """Sets `model` (in place) to compute in `name` by `recipe` (None: `default_recipe()`); returns the model.

  "float32" undoes either recipe.
  """
  check(name)
  recipe = recipe or default_recipe()
  if recipe not in RECIPES:
    raise ValueError(f"precision recipe {recipe!r}; choose one of {', '.join(RECIPES)}.")
  layer_dtype = COMPUTE_DTYPES[name] if recipe == "activations" else None
  operands16 = name == "bfloat16" and recipe == "matmul_operands"
  for _, module in nnx.iter_modules(model):
    if hasattr(module, "dtype") and hasattr(module, "param_dtype"):  # Flax's layers with a computation dtype
      module.dtype = layer_dtype
    if isinstance(module, nnx.Linear):
      module.dot_general = bf16_matmul.dot_general if operands16 else jax.lax.dot_general
  return model
