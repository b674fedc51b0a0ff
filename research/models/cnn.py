"""LeNet-style convolutional classifier."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from research.models.layers import ConvBN, max_pool
from research.errors import ConfigError
from research.registry import MODELS


class CNN(nnx.Module):
  """[conv k x k -> BatchNorm -> ReLU -> 2x2 max-pool] per entry of `channels`, then
  dense -> ReLU -> dropout -> linear head.

  Inputs:  float[batch, height, width, in_channels] (NHWC), e.g. normalized 28x28x1 digits.
  Outputs: float[batch, num_classes] logits.
  With `train=True` BatchNorm uses the batch's statistics and updates its
  running averages, and dropout draws from `rngs` (stream "dropout"); with
  `train=False` BatchNorm uses the running averages and dropout is off.
  """

  fast_paths: bool = True  # the max-pool's formulation (research/models/layers/fast_paths.py)

  def __init__(self, image_shape: Sequence[int], num_classes: int, *, channels: Sequence[int] = (32, 64),
               kernel_size: int = 5, hidden_size: int = 256, dropout: float = 0.5, bn_momentum: float = 0.9,
               rngs: nnx.Rngs):
    height, width, in_channels = image_shape
    sizes = [in_channels, *channels]
    self.blocks = nnx.List([ConvBN(a, b, kernel_size, bn_momentum=bn_momentum, rngs=rngs)
                            for a, b in zip(sizes[:-1], sizes[1:])])
    for _ in channels:
      height, width = height // 2, width // 2
    if height < 1 or width < 1:
      raise ConfigError(f"{len(channels)} 2x2 poolings leave nothing of a {image_shape[0]}x{image_shape[1]} "
                       f"image; use fewer model.channels.")
    self.hidden = nnx.Linear(height * width * sizes[-1], hidden_size, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(hidden_size, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    for block in self.blocks:
      x = max_pool(block(x, train=train), 2, fast=self.fast_paths)
    x = jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1)))
    return self.head(self.dropout(x, deterministic=not train, rngs=rngs))


@MODELS.register("cnn")
def build_cnn(config, sample: jnp.ndarray, rngs: nnx.Rngs) -> CNN:
  """`config.model` fields: channels, kernel_size, hidden_size, num_classes, dropout, bn_momentum.

  `sample` is a preprocessed NHWC batch; it fixes the image shape.
  """
  if sample.ndim != 4:
    raise ConfigError(f"model 'cnn' takes NHWC images; the preprocessed input has shape {tuple(sample.shape)} "
                     f"(remove 'flatten' from data.preprocess).")
  return CNN(tuple(sample.shape[1:]), config.num_classes, channels=tuple(config.channels),
             kernel_size=config.kernel_size, hidden_size=config.hidden_size, dropout=config.dropout,
             bn_momentum=config.bn_momentum, rngs=rngs)
