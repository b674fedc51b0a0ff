"""Dense-layer products with bfloat16 operands and float32 results: mixed precision for CPUs.

On a CPU with bfloat16 dot units (Intel AMX, AVX512-BF16), XLA:CPU multiplies
bfloat16 operands into a float32 result about 3x faster than float32 operands
([4096, 128] x [128, 512]: 0.73 against 2.2 ms on an AMX Xeon), but into a
bfloat16 result no faster than float32 (3.1 ms). Flax's `dtype=bfloat16`
layers ask for bfloat16 results, and autodiff of a float32-result product
multiplies float32 cotangents by bfloat16 operands, so neither gains there.

`dot_general` takes the place of an `nnx.Linear`'s own: it rounds the input and
the kernel to bfloat16 and returns their product in float32, and its custom VJP
rounds the cotangent to bfloat16 too, so the backward products (`g w^T`,
`x^T g`) take bfloat16 operands as well. Everything between the products
(activations, normalization, softmax, residuals) stays float32, as with the
default matmul precision of TPUs. research/models/precision.py installs it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

BF16, F32 = jnp.bfloat16, jnp.float32


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None, preferred_element_type=None,
                out_sharding=None) -> jax.Array:
  """A drop-in for `nnx.Linear.dot_general`: x float[..., in] times kernel float[in, out], float32 result.

  Only the Linear form (the input's last axis against the kernel's first, no batch axes) is taken; `precision`
  and `preferred_element_type` are superseded by the bfloat16-operand, float32-result product.
  """
  if tuple(map(tuple, dimension_numbers[0])) != ((lhs.ndim - 1,), (0,)) or any(dimension_numbers[1]) \
     or rhs.ndim != 2:
    raise ValueError(f"bf16_matmul.dot_general takes nnx.Linear's product (the input's last axis against a 2-D "
                     f"kernel's first), not dimension_numbers={dimension_numbers} for shapes {lhs.shape} x "
                     f"{rhs.shape}; use it only as a Linear layer's dot_general.")
  if out_sharding is not None:
    raise ValueError("bf16_matmul.dot_general does not take out_sharding; shard the layer's inputs instead.")
  return _product(lhs, rhs, lhs.dtype, rhs.dtype)


def _contract_last(a: jax.Array, b: jax.Array, b_axis: int) -> jax.Array:
  """a[..., k] against b's axis `b_axis` (of 2), from bfloat16 operands into float32."""
  return lax.dot_general(a, b, (((a.ndim - 1,), (b_axis,)), ((), ())), preferred_element_type=F32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))  # the operands' dtypes: their gradients' dtypes
def _product(x, kernel, x_dtype, kernel_dtype):
  return _product_forward(x, kernel, x_dtype, kernel_dtype)[0]


def _product_forward(x, kernel, x_dtype, kernel_dtype):
  x16, kernel16 = x.astype(BF16), kernel.astype(BF16)
  # The residuals are the bfloat16 copies: half the memory of float32 ones, and the backward needs nothing else.
  return _contract_last(x16, kernel16, 0), (x16, kernel16)


def _product_backward(x_dtype, kernel_dtype, residuals, g):
  x16, kernel16 = residuals
  g16 = g.astype(BF16)
  d_x = _contract_last(g16, kernel16, 1)  # g w^T
  batch = tuple(range(x16.ndim - 1))
  d_kernel = lax.dot_general(x16, g16, ((batch, batch), ((), ())), preferred_element_type=F32)  # x^T g
  return d_x.astype(x_dtype), d_kernel.astype(kernel_dtype)


_product.defvjp(_product_forward, _product_backward)
