"""Convolution + BatchNorm (+ ReLU), and the ResNet basic block."""

from __future__ import annotations

import jax
from flax import nnx

from research.models.layers.norm import BatchNorm

# He-normal, fan-out (as torchvision initializes ResNets): keeps activations' scale through ReLU layers.
conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


class ConvBN(nnx.Module):
  """Conv (no bias) -> BatchNorm -> ReLU (optional).

  Inputs:  float[N, H, W, in_channels].
  Outputs: float[N, ceil(H / stride), ceil(W / stride), out_channels] (SAME padding).
  `zero_init_scale` starts the BatchNorm scale at 0, so a residual branch ending
  here starts as the identity (Goyal et al., 2017).
  """

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, *,
               relu: bool = True, bn_momentum: float = 0.9, zero_init_scale: bool = False, rngs: nnx.Rngs):
    self.conv = nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size), strides=stride, padding="SAME",
                         use_bias=False, kernel_init=conv_init, rngs=rngs)
    self.norm = BatchNorm(out_channels, momentum=bn_momentum,
                              scale_init=nnx.initializers.zeros if zero_init_scale else nnx.initializers.ones,
                              rngs=rngs)
    self.relu = relu

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = self.norm(self.conv(x), use_running_average=not train)
    return jax.nn.relu(x) if self.relu else x


class BasicBlock(nnx.Module):
  """ResNet basic block: relu(x' + F(x)), F = 3x3 ConvBN-ReLU -> 3x3 ConvBN (He et al., 2016).

  Inputs:  float[N, H, W, in_channels].
  Outputs: float[N, ceil(H / stride), ceil(W / stride), out_channels].
  The shortcut x' is the identity, or a 1x1 ConvBN projection where the stride
  or the channel count changes.
  """

  def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *, bn_momentum: float = 0.9,
               zero_init_residual: bool = True, rngs: nnx.Rngs):
    self.conv1 = ConvBN(in_channels, out_channels, 3, stride, bn_momentum=bn_momentum, rngs=rngs)
    self.conv2 = ConvBN(out_channels, out_channels, 3, 1, relu=False, bn_momentum=bn_momentum,
                        zero_init_scale=zero_init_residual, rngs=rngs)
    projection = stride != 1 or in_channels != out_channels
    self.shortcut = (ConvBN(in_channels, out_channels, 1, stride, relu=False, bn_momentum=bn_momentum, rngs=rngs)
                     if projection else None)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    residual = x if self.shortcut is None else self.shortcut(x, train=train)
    return jax.nn.relu(residual + self.conv2(self.conv1(x, train=train), train=train))
