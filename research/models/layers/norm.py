"""BatchNorm with a fused training-mode backward pass.

`BatchNorm` is `flax.nnx.BatchNorm` (same arguments, variables and eval mode)
whose training mode, with the fast paths on, normalizes through `_train_norm`:
a custom VJP that returns the gradient in closed form,

    dx = scale * rstd / n * (n * dy - sum(dy) - xhat * sum(dy * xhat)),

two sums and one elementwise pass. The sums over the batch are matmuls with
ones on XLA:CPU (`reductions.batch_sum`); the batch statistics' two sums
take one fused pass over the activations first (`reductions.batch_sums`).
XLA's autodiff of the textbook
formula takes several passes over the activations; on XLA:CPU this backward
pass was ~4x faster (docs/performance.md, "The CPU investigation"). The batch statistics are
those of nnx.BatchNorm (mean and E[x^2] - mean^2 over every axis but the
last); the running averages update the same way.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from research.models.layers.reductions import batch_sum, batch_sums


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def _train_norm(x, scale, bias, epsilon):
  """(normalized x * scale + bias, batch mean, batch variance), statistics over all axes but the last."""
  return _train_norm_forward(x, scale, bias, epsilon)[0]


def _statistics(x):
  n = x.size // x.shape[-1]
  total, total_of_squares = batch_sums(x, jnp.square(x))
  mean = total / n
  var = jnp.maximum(total_of_squares / n - jnp.square(mean), 0.0)
  return mean, var


def _train_norm_forward(x, scale, bias, epsilon):
  mean, var = _statistics(x)
  rstd = jax.lax.rsqrt(var + epsilon)
  y = (x - mean) * (rstd * scale) + bias
  return (y, mean, var), (x, mean, rstd, scale)


def _train_norm_backward(epsilon, residuals, cotangents):
  x, mean, rstd, scale = residuals
  dy = cotangents[0]  # The statistics are read only under stop_gradient (running averages): no cotangent.
  n = x.size // x.shape[-1]
  xhat = (x - mean) * rstd
  # Not `batch_sums`: XLA:CPU would fuse dy's producers (the ReLU and max-pool backward) into its loop, where
  # they ran ~4x slower than as their own pass (the CNN's train step: 0.91x). A matmul's operands are written out.
  dbias = batch_sum(dy)
  dscale = batch_sum(dy * xhat)
  dx = (scale * rstd / n) * (n * dy - dbias - xhat * dscale)
  return dx, dscale, dbias


_train_norm.defvjp(_train_norm_forward, _train_norm_backward)


def _varying(x) -> bool:
  """True for per-device values inside shard_map (parallel.strategy="pmap"): there the replicated scale's
  gradient needs the psum that autodiff inserts, so the reference formulation is used."""
  axis_type = getattr(jax.typeof(x), "manual_axis_type", None)
  return bool(getattr(axis_type, "varying", False))


class BatchNorm(nnx.BatchNorm):
  """`nnx.BatchNorm` over the last (feature) axis; see the module docstring for its training-mode backward.

  Inputs:  float[..., features]. Outputs: the same shape.
  """

  fast_paths: bool = True  # the closed-form training-mode backward (research/models/layers/fast_paths.py)

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    use_running_average = self.use_running_average if use_running_average is None else use_running_average
    fast = (self.fast_paths and not use_running_average and mask is None and self.axis_name is None
            and not _varying(x)
            and self.axis in (-1, x.ndim - 1) and self.dtype is None and self.scale is not None
            and self.bias is not None)
    if not fast:
      return super().__call__(x, use_running_average, mask=mask)
    y, mean, var = _train_norm(x, self.scale[...], self.bias[...], self.epsilon)
    mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
    self.mean[...] = self.momentum * self.mean[...] + (1 - self.momentum) * mean
    self.var[...] = self.momentum * self.var[...] + (1 - self.momentum) * var
    return y
