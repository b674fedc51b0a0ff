"""Multi-head self-attention with a padding mask, the pre-LayerNorm Transformer block, positions.

Masks are boolean, True where attention is allowed. A key-padding mask
bool[B, L] (True on real tokens) is the common case; any mask that broadcasts
to [B, heads, L_query, L_key] (e.g. a causal mask) works too. Masked keys get a
weight of exactly 0, so padding appended to a sequence never changes the
outputs at its real positions.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from research.models.layers.attention_core import attention_weights, dot_product_attention, split_heads
from research.sharding import constrain_batch


def sinusoidal_positions(length: int, dim: int, dtype=jnp.float32) -> jax.Array:
  """The fixed sin/cos position encodings of Vaswani et al. (2017): float[length, dim]."""
  position = jnp.arange(length, dtype=jnp.float32)[:, None]
  rate = jnp.exp(jnp.arange(0, dim, 2, dtype=jnp.float32) * (-math.log(10000.0) / dim))
  table = jnp.zeros((length, dim), jnp.float32)
  table = table.at[:, 0::2].set(jnp.sin(position * rate))
  table = table.at[:, 1::2].set(jnp.cos(position * rate[: dim // 2]))
  return table.astype(dtype)


def _broadcast_mask(mask: jax.Array | None) -> jax.Array | None:
  if mask is None:
    return None
  mask = mask.astype(bool)
  return mask[:, None, None, :] if mask.ndim == 2 else mask  # key padding [B, L] -> [B, 1, 1, L]


class MultiHeadAttention(nnx.Module):
  """Multi-head scaled dot-product self-attention.

  :Inputs:  x float[B, L, dim]; mask bool[B, L] (True = real token) or one that
           broadcasts to [B, num_heads, L, L]; None attends everywhere.
  :Outputs: float[B, L, dim].
  """

  fast_paths: bool = True  # research/models/layers/fast_paths.py
  capture_weights: bool = False  # sow the attention probabilities (research/explain/attention.py); off in training

  def __init__(self, dim: int, num_heads: int, *, dropout: float = 0.0, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"attention: dim={dim} is not divisible by num_heads={num_heads}.")
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.qkv_heads = nnx.Linear(dim, 3 * dim, rngs=rngs)  # laid out by head: split_heads
    self.out = nnx.Linear(dim, dim, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    b, length, dim = x.shape
    q, k, v = split_heads(self.qkv_heads(x), self.num_heads)
    mask = _broadcast_mask(mask)
    if self.capture_weights:
      self.sow(nnx.Intermediate, "attention_weights", attention_weights(q, k, mask))
    dropout = partial(self.dropout, rngs=rngs) if train and self.dropout.rate > 0 else None
    return self.out(dot_product_attention(q, k, v, mask, dropout, fast=self.fast_paths).reshape(b, length, dim))


class TransformerBlock(nnx.Module):
  """Pre-LayerNorm encoder block: x + Attn(LN(x)), then x + MLP(LN(x)) (GELU), dropout on each branch.

  Inputs:  x float[B, L, dim]; mask as for `MultiHeadAttention`.
  Outputs: float[B, L, dim].
  """

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, dropout: float = 0.0,
               attention_dropout: float = 0.0, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
    self.attention = MultiHeadAttention(dim, num_heads, dropout=attention_dropout, rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
    self.mlp_in = nnx.Linear(dim, mlp_dim, rngs=rngs)
    self.mlp_out = nnx.Linear(mlp_dim, dim, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    x = constrain_batch(x)  # rows split like the batch between blocks, whatever the weights' layout
    drop = lambda y: self.dropout(y, deterministic=not train, rngs=rngs)
    x = x + drop(self.attention(self.norm1(x), mask, train=train, rngs=rngs))
    return x + drop(self.mlp_out(jax.nn.gelu(self.mlp_in(self.norm2(x)))))
