"""Pooling over NHWC images.

`max_pool` with non-overlapping windows (strides == window, VALID padding, the
usual 2x2/2) gives the same outputs as `flax.nnx.max_pool` (XLA's
`reduce_window`) without its backward pass, `select_and_scatter`, which on
XLA:CPU dominated a small CNN's train step. With `fast=True` (the
default; a model's setting, research/models/layers/fast_paths.py) a window's maximum is a tree of
elementwise maxima over strided slices, and its backward pass is a custom VJP:
one elementwise pass, `dx = (x == upsampled y) * upsampled(dy / ties)`. The
reference formulation reshapes each window into its own axes and takes a `max`.
Autodiff of the tree of maxima was a chain of selects, divisions and pads that
XLA:CPU fused with a recomputation of the BatchNorm and ReLU before it: 21.7 ms
of the benchmark CNN's step for float32[128, 28, 28, 32]; the custom VJP's
pass takes ~4 ms there (docs/performance.md).
Where a window holds several equal maxima the gradient is shared equally among
them, as for the reference `max` (`reduce_window` gives it all to one); with
continuous inputs ties do not occur, and after a ReLU tied zeros get zero
gradient either way. Overlapping windows and SAME padding use `nnx.max_pool`.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx



def _pair(value: int | Sequence[int]) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


def max_pool(x: jax.Array, window: int | Sequence[int] = 2, strides: int | Sequence[int] | None = None,
             padding: str = "VALID", *, fast: bool = True) -> jax.Array:
  """Max pooling of float[N, H, W, C] -> float[N, H', W', C]; `fast` picks the fast formulation (above).

  VALID padding drops the rows and columns that do not fill a window, like
  `nnx.max_pool`: a 7x7 map pooled 2x2/2 gives 3x3.
  """
  window = _pair(window)
  strides = window if strides is None else _pair(strides)
  if strides != window or padding != "VALID":
    return nnx.max_pool(x, window_shape=window, strides=strides, padding=padding)
  (kh, kw), (n, h, w, c) = window, x.shape
  oh, ow = h // kh, w // kw
  x = x[:, :oh * kh, :ow * kw, :]
  if fast:
    return _window_max(x, (kh, kw))
  return jnp.max(x.reshape(n, oh, kh, ow, kw, c), axis=(2, 4))


def _window_slices(x: jax.Array, window: tuple[int, int]) -> list[jax.Array]:
  """The kh * kw strided slices of x whose elementwise maximum is the pooled map."""
  kh, kw = window
  return [x[:, i::kh, j::kw, :] for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_max(x: jax.Array, window: tuple[int, int]) -> jax.Array:
  """float[N, kh*H', kw*W', C] -> float[N, H', W', C]: the maximum of each kh x kw window."""
  return functools.reduce(jnp.maximum, _window_slices(x, window))


def _window_max_forward(x, window):
  y = _window_max(x, window)
  return y, (x, y)


def _window_max_backward(window, residuals, dy):
  x, y = residuals
  (kh, kw), (n, oh, ow, c) = window, y.shape
  upsample = lambda a: jnp.broadcast_to(a[:, :, None, :, None, :], (n, oh, kh, ow, kw, c)).reshape(x.shape)
  ties = functools.reduce(jnp.add, [(s == y).astype(dy.dtype) for s in _window_slices(x, window)])
  return ((x == upsample(y)).astype(dy.dtype) * upsample(dy / ties),)


_window_max.defvjp(_window_max_forward, _window_max_backward)


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Mean over the spatial axes: float[N, H, W, C] -> float[N, C]."""
  return jnp.mean(x, axis=(1, 2))
