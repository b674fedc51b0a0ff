"""Transformer encoder text classifier: pre-LayerNorm blocks, a padding mask, mean or CLS pooling.

Registered as "transformer". `config.model` fields::

| field | meaning |
|---|---|
| `vocab_size` | rows of the embedding table: at least the `tokenize` op's `vocab_size` |
| `num_classes` | outputs |
| `dim`, `num_heads`, `num_layers`, `mlp_dim` | width, heads, blocks, hidden units of each block's MLP |
| `dropout`, `attention_dropout` | on embeddings and residual branches; on attention weights |
| `positions` | "learned" (a table of `max_length` rows) or "sinusoidal" (fixed, any length) |
| `pooling` | "mean" over real tokens, or "cls" (a learned vector prepended to every sequence) |
| `max_length` | longest sequence for learned positions; 0 = the preprocessed inputs' length |
| `pad_id` | the padding token id (0 for research/data/tokenizers.py) |

The padding mask is `tokens != pad_id` unless given: the model needs only the
token ids, in the train loop (`config.data.input_key = "tokens"`), in
evaluation and in exported artifacts alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from research.errors import ConfigError
from research.models.layers import remat
from research.models.layers.attention import TransformerBlock, sinusoidal_positions
from research.registry import MODELS

POSITIONS = ("learned", "sinusoidal")
POOLINGS = ("mean", "cls")


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of x float[B, L, D] over the positions where mask bool[B, L] is True: float[B, D] (0 if none)."""
  weights = mask.astype(x.dtype)[..., None]
  return jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)


class TransformerClassifier(nnx.Module):
  """Token ids -> class logits through a stack of pre-LayerNorm Transformer encoder blocks.

  Inputs:  tokens int[B, L]; mask bool/int[B, L] (1 = real token), default `tokens != pad_id`.
  Outputs: float[B, num_classes] logits. Appending padding to `tokens` does not change them.
  """

  remat: str = "none"  # the blocks' rematerialization policy (research/models/layers/remat.py)

  def __init__(self, vocab_size: int, num_classes: int, *, dim: int = 128, num_heads: int = 4, num_layers: int = 2,
               mlp_dim: int = 256, dropout: float = 0.1, attention_dropout: float = 0.0,
               positions: str = "learned", pooling: str = "mean", max_length: int = 512, pad_id: int = 0,
               rngs: nnx.Rngs):
    if positions not in POSITIONS:
      raise ConfigError(f"model.positions={positions!r}: choose one of {', '.join(POSITIONS)}.")
    if pooling not in POOLINGS:
      raise ConfigError(f"model.pooling={pooling!r}: choose one of {', '.join(POOLINGS)}.")
    self.pad_id, self.positions, self.pooling, self.max_length = pad_id, positions, pooling, max_length
    self.embed = nnx.Embed(vocab_size, dim, embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    extra = 1 if pooling == "cls" else 0
    if positions == "learned":
      self.position_table = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (max_length + extra, dim)))
    if pooling == "cls":
      self.cls = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (1, 1, dim)))
    self.blocks = nnx.List([TransformerBlock(dim, num_heads, mlp_dim, dropout=dropout,
                                             attention_dropout=attention_dropout, rngs=rngs)
                            for _ in range(num_layers)])
    self.norm = nnx.LayerNorm(dim, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(dim, num_classes, rngs=rngs)

  def __call__(self, tokens: jax.Array, mask: jax.Array | None = None, *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    mask = (tokens != self.pad_id) if mask is None else mask.astype(bool)
    return self.from_embeddings(self.embed(tokens), mask, train=train, rngs=rngs)

  def from_embeddings(self, x: jax.Array, mask: jax.Array, *, train: bool = False,
                      rngs: nnx.Rngs | None = None) -> jax.Array:
    """Logits from token embeddings float[B, L, dim] (`self.embed(tokens)`) and mask bool[B, L]: the rest of
    `__call__`, where research/explain attributes a prediction to each token's embedding."""
    if self.pooling == "cls":  # a learned [CLS] vector in front of every sequence, always attended to
      x = jnp.concatenate([jnp.broadcast_to(self.cls[...], (x.shape[0], 1, x.shape[2])).astype(x.dtype), x], 1)
      mask = jnp.concatenate([jnp.ones((mask.shape[0], 1), bool), mask], axis=1)
    length = x.shape[1]
    if self.positions == "learned":
      if length > self.position_table.shape[0]:
        raise ValueError(f"transformer: sequences of {length} tokens exceed the learned position table "
                         f"({self.position_table.shape[0]}); raise model.max_length.")
      x = x + self.position_table[:length]
    else:
      x = x + sinusoidal_positions(length, x.shape[-1], x.dtype)
    x = self.dropout(x, deterministic=not train, rngs=rngs)
    for block in self.blocks:
      x = remat.call(self.remat, block, x, mask, train=train, rngs=rngs)
    x = self.norm(x)
    pooled = x[:, 0] if self.pooling == "cls" else masked_mean(x, mask)
    return self.head(self.dropout(pooled, deterministic=not train, rngs=rngs))


@MODELS.register("transformer")
def build_transformer(config, sample: jnp.ndarray, rngs: nnx.Rngs) -> TransformerClassifier:
  """Sized by `config.model` (see the module docstring) and sample tokens int[B, L]."""
  return TransformerClassifier(
      config.vocab_size, config.num_classes, dim=config.dim, num_heads=config.num_heads,
      num_layers=config.num_layers, mlp_dim=config.mlp_dim, dropout=config.dropout,
      attention_dropout=config.get("attention_dropout", 0.0), positions=config.positions, pooling=config.pooling,
      max_length=config.get("max_length", 0) or int(sample.shape[1]), pad_id=config.get("pad_id", 0), rngs=rngs)
