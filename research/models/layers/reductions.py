"""Sums that XLA:CPU computes fast: over the batch (every axis but the last), and of squares.

XLA rewrites a large reduction into a tree of reduce-windows, which XLA:CPU
runs at ~1-2 GB/s: summing float32[128, 28, 28, 32] and its square over the
batch took 13.9 ms; as a matmul with a vector of ones (a YNNPACK kernel) the
same sums take 3.6 ms. `batch_sums` goes further for several sums of one
shape: one fused pass sums blocks of a few rows of each (a reduction that
short stays a loop, and the elementwise work producing its operands, such as
the square, fuses into it instead of being written out), then a ones-matmul
sums the blocks: 1.4-1.8 ms for the same two sums. Other backends keep
`jnp.sum`. Used by BatchNorm (research/models/layers/norm.py). Not used for
the bias gradients of the Transformer's dense layers: there XLA then
transposed the GELU's gradient for the matmuls, and the training step ran 14%
slower.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def batch_sum(x: jax.Array) -> jax.Array:
  """float[..., C] -> float[C]: the sum over every axis but the last."""
  if jax.default_backend() != "cpu":
    return jnp.sum(x, tuple(range(x.ndim - 1)))
  rows = x.reshape(-1, x.shape[-1])
  # The barrier keeps XLA from folding the ones back into a reduction; HIGHEST keeps float32 accumulation.
  ones = jax.lax.optimization_barrier(jnp.ones((rows.shape[0],), x.dtype))
  return jnp.matmul(ones, rows, precision=jax.lax.Precision.HIGHEST)


BLOCK_ROWS = 16  # rows per block of `batch_sums`' fused pass: the fastest of 4-32 on the CNN's activations


def batch_sums(*xs: jax.Array) -> tuple[jax.Array, ...]:
  """float[..., C] arrays of one shape -> a tuple of float[C]: each one's sum over every axis but the last.

  XLA:CPU fuses the elementwise producers of `xs` (e.g. `x * x`) into one pass over the rows (module
  docstring). That loop recomputes them per element, so give it cheap ones over written-out arrays: with the
  ReLU and max-pool backward behind its operands it ran ~4x slower than their own pass. The blocks also make
  the sums closer to float64 than the ones-matmul's long running sums.
  """
  if jax.default_backend() != "cpu":
    return tuple(jnp.sum(x, tuple(range(x.ndim - 1))) for x in xs)
  channels = xs[0].shape[-1]
  rows = xs[0].size // channels
  block = next(b for b in (BLOCK_ROWS, 8, 4, 2, 1) if rows % b == 0)
  if block == 1:
    return tuple(batch_sum(x) for x in xs)
  # float32 blocks (as the ones-matmul accumulates), each sum returned in its input's dtype (as `batch_sum`).
  blocks = tuple(x.reshape(rows // block, block, channels).astype(jnp.float32) for x in xs)
  zeros = (jnp.float32(0),) * len(xs)
  partial = jax.lax.reduce(blocks, zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), (1,))
  return tuple(batch_sum(p).astype(x.dtype) for p, x in zip(partial, xs))


def sum_of_squares(x: jax.Array) -> jax.Array:
  """float[...] -> float[]: the sum of the squares of all elements (a squared L2 norm).

  On XLA:CPU each row's squares are summed by a matrix-vector product with ones, which streams the rows
  contiguously: the benchmark MLP's train step ran 0.987x of the hand-written loop with its gradient norm
  computed so, against 0.944x with `batch_sum` (a vector-matrix product: column sums) and 0.90x with `jnp.sum`.
  """
  if jax.default_backend() != "cpu" or x.ndim < 2 or x.size == 0:
    return jnp.sum(jnp.square(x))
  rows = jnp.square(x.reshape(-1, x.shape[-1]))
  return jnp.sum(jnp.matmul(rows, jnp.ones((rows.shape[1],), x.dtype), precision=jax.lax.Precision.HIGHEST))
