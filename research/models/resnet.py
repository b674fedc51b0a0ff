"""Residual networks (He et al., 2016): ImageNet-style ResNet-18/34 and CIFAR-style ResNet-(6n+2)."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from research.models.layers import BasicBlock, ConvBN, global_avg_pool, max_pool
from research.errors import ConfigError
from research.registry import MODELS

# depth -> blocks per stage of the ImageNet-style networks (basic blocks, widths w, 2w, 4w, 8w).
IMAGENET_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def stage_sizes(depth: int) -> tuple[tuple[int, ...], str]:
  """(blocks per stage, stem) of a ResNet `depth`: 18/34 ImageNet-style, 6n+2 (20, 32, 44, 56, 110) CIFAR-style."""
  if depth in IMAGENET_STAGES:
    return IMAGENET_STAGES[depth], "imagenet"
  if depth >= 8 and (depth - 2) % 6 == 0:
    n = (depth - 2) // 6
    return (n, n, n), "cifar"
  raise ConfigError(f"model.depth={depth}: use 18 or 34 (ImageNet-style, for ~224-px inputs) or 6n+2 such as "
                   f"20, 32, 44, 56, 110 (CIFAR-style, for 32x32 or 28x28 inputs).")


class ResNet(nnx.Module):
  """Stem -> stages of basic blocks -> global average pool -> dropout -> linear head.

  Inputs:  float[batch, height, width, in_channels] (NHWC).
  Outputs: float[batch, num_classes] logits.

  `stem="imagenet"`: 7x7/2 ConvBN-ReLU and a 3x3/2 max-pool (the spatial size
  drops 4x before the first stage; ResNet-18/34 for ~224-px inputs).
  `stem="cifar"`: one 3x3 ConvBN-ReLU at full resolution (ResNet-20/56 for 32x32
  or 28x28 inputs). Each stage after the first halves the spatial size and
  doubles the width, starting from `width`. With `train=True` BatchNorm uses
  batch statistics (updating its running averages) and dropout draws from
  `rngs`; with `train=False` BatchNorm uses the running averages and dropout is off.
  """

  def __init__(self, in_channels: int, num_classes: int, *, blocks: Sequence[int], width: int, stem: str,
               dropout: float = 0.0, bn_momentum: float = 0.9, zero_init_residual: bool = True,
               rngs: nnx.Rngs):
    if stem not in ("imagenet", "cifar"):
      raise ValueError(f"stem={stem!r}; choose 'imagenet' or 'cifar'.")
    self.stem_kind = stem
    self.stem = ConvBN(in_channels, width, 7 if stem == "imagenet" else 3, 2 if stem == "imagenet" else 1,
                       bn_momentum=bn_momentum, rngs=rngs)
    layers, channels = [], width
    for stage, count in enumerate(blocks):
      out_channels = width * 2 ** stage
      for i in range(count):
        stride = 2 if stage > 0 and i == 0 else 1
        layers.append(BasicBlock(channels, out_channels, stride, bn_momentum=bn_momentum,
                                 zero_init_residual=zero_init_residual, rngs=rngs))
        channels = out_channels
    self.blocks = nnx.List(layers)
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(channels, num_classes, rngs=rngs)

  def features(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """The pooled features before the head: float[batch, width * 2**(stages - 1)]."""
    x = self.stem(x, train=train)
    if self.stem_kind == "imagenet":
      x = max_pool(x, 3, 2, padding="SAME")
    for block in self.blocks:
      x = block(x, train=train)
    return global_avg_pool(x)

  def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    x = self.features(x, train=train)
    return self.head(self.dropout(x, deterministic=not train, rngs=rngs))


@MODELS.register("resnet")
def build_resnet(config, sample: jnp.ndarray, rngs: nnx.Rngs) -> ResNet:
  """`config.model` fields: depth (18, 34, or 6n+2 such as 20, 56), width (channels of the first stage:
  64 for ResNet-18, 16 for ResNet-20/56), num_classes, dropout, bn_momentum, zero_init_residual.

  `sample` is a preprocessed NHWC batch; it fixes the number of input channels.
  """
  if sample.ndim != 4:
    raise ConfigError(f"model 'resnet' takes NHWC images; the preprocessed input has shape {tuple(sample.shape)} "
                     f"(remove 'flatten' from data.preprocess).")
  blocks, stem = stage_sizes(config.depth)
  return ResNet(int(sample.shape[-1]), config.num_classes, blocks=blocks, width=config.width, stem=stem,
                dropout=config.dropout, bn_momentum=config.bn_momentum,
                zero_init_residual=config.get("zero_init_residual", True), rngs=rngs)
