"""Multi-layer perceptron classifier."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from research.registry import ACTIVATIONS, MODELS

# The elementwise functions of jax.nn a config may name as `model.activation`.
for _name in ("celu", "elu", "gelu", "hard_sigmoid", "hard_silu", "hard_swish", "hard_tanh", "identity", "leaky_relu",
              "log_sigmoid", "mish", "relu", "relu6", "selu", "sigmoid", "silu", "soft_sign", "softplus", "sparse_plus",
              "sparse_sigmoid", "squareplus", "swish", "tanh"):
  ACTIVATIONS.register(_name)(getattr(jax.nn, _name))


class MLP(nnx.Module):
  """Dense -> activation (-> dropout) layers, then a linear head.

  Inputs:  float[batch, in_features].
  Outputs: float[batch, num_classes] logits.
  """

  def __init__(self, in_features: int, hidden_sizes: Sequence[int], num_classes: int, *,
               dropout: float = 0.0, activation: str = "relu", rngs: nnx.Rngs):
    sizes = [in_features, *hidden_sizes]
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.activation = ACTIVATIONS.get(activation)

  def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    for layer in self.hidden:
      x = self.dropout(self.activation(layer(x)), deterministic=not train, rngs=rngs)
    return self.head(x)


@MODELS.register("mlp")
def build_mlp(config, sample: jnp.ndarray, rngs: nnx.Rngs) -> MLP:
  """`config.model` fields: hidden_sizes, num_classes, dropout, activation."""
  return MLP(int(sample.shape[-1]), tuple(config.hidden_sizes), config.num_classes,
             dropout=config.dropout, activation=config.activation, rngs=rngs)
