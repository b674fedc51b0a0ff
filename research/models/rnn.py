"""Stacked LSTM / GRU text classifier with a bidirectional option and masked padding.

Registered as "rnn". `config.model` fields::

| field | meaning |
|---|---|
| `vocab_size` | rows of the embedding table: at least the `tokenize` op's `vocab_size` |
| `num_classes` | outputs |
| `cell` | "lstm" or "gru" (flax `nnx.OptimizedLSTMCell` / `nnx.GRUCell`) |
| `embed_dim`, `hidden_size`, `num_layers` | embedding width, units per direction, stacked layers |
| `bidirectional` | add a right-to-left RNN to every layer; outputs are concatenated |
| `pooling` | "last" (final states), "mean" or "max" over the real tokens' outputs |
| `dropout` | on embeddings, between layers and before the head |
| `pad_id` | the padding token id (0 for research/data/tokenizers.py) |

Padding is masked inside the recurrence: at a padded step the state is carried
over unchanged and the output is zero, and pooling ignores padded steps. So
padding, wherever it is, never changes the logits (tested). The mask is
`tokens != pad_id` unless given, so the model needs only the token ids.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from research.errors import ConfigError
from research.models.transformer import masked_mean
from research.registry import MODELS

CELLS = {"lstm": nnx.OptimizedLSTMCell, "gru": nnx.GRUCell}
POOLINGS = ("last", "mean", "max")


class MaskedRNN(nnx.Module):
  """Runs one RNN cell over a sequence, skipping masked steps.

  :Inputs:  x float[B, T, in_features]; mask bool[B, T] (True = real step).
  :Outputs: (outputs float[B, T, hidden], last hidden float[B, hidden]). Outputs
           are 0 at masked steps; the last hidden state is the one after the last
           real step (after the first real step when `reverse`).

  `reverse=True` reads the sequence right to left (outputs stay in input order).
  """

  def __init__(self, cell: str, in_features: int, hidden_size: int, *, reverse: bool = False, rngs: nnx.Rngs):
    if cell not in CELLS:
      raise ConfigError(f"model.cell={cell!r}: choose one of {', '.join(CELLS)}.")
    self.cell = CELLS[cell](in_features, hidden_size, rngs=rngs)
    self.is_lstm = cell == "lstm"
    self.hidden_size = hidden_size
    self.reverse = reverse

  def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    h0 = jnp.zeros((x.shape[0], self.hidden_size), x.dtype)
    carry = (h0, h0) if self.is_lstm else h0  # LSTM: (c, h); GRU: h
    xs, ms = jnp.swapaxes(x, 0, 1), jnp.swapaxes(mask, 0, 1)[..., None]  # time-major for the scan
    if self.reverse:  # flip explicitly rather than scan(reverse=True), which jax2onnx cannot export
      xs, ms = xs[::-1], ms[::-1]

    def step(carry, inputs):
      x_t, m_t = inputs
      new_carry, y = self.cell(carry, x_t)
      carry = jax.tree.map(lambda new, old: jnp.where(m_t, new, old), new_carry, carry)  # padding: keep state
      return carry, jnp.where(m_t, y, 0.0)

    carry, ys = jax.lax.scan(step, carry, (xs, ms))
    if self.reverse:
      ys = ys[::-1]
    last = carry[1] if self.is_lstm else carry
    return jnp.swapaxes(ys, 0, 1), last


class RNNClassifier(nnx.Module):
  """Token ids -> embeddings -> stacked (bi)LSTM/GRU -> pooled -> class logits.

  Inputs:  tokens int[B, T]; mask bool/int[B, T] (1 = real token), default `tokens != pad_id`.
  Outputs: float[B, num_classes] logits. Padding never changes them.
  """

  def __init__(self, vocab_size: int, num_classes: int, *, cell: str = "lstm", embed_dim: int = 128,
               hidden_size: int = 128, num_layers: int = 1, bidirectional: bool = True, pooling: str = "last",
               dropout: float = 0.0, pad_id: int = 0, rngs: nnx.Rngs):
    if pooling not in POOLINGS:
      raise ConfigError(f"model.pooling={pooling!r}: choose one of {', '.join(POOLINGS)}.")
    self.pad_id, self.pooling = pad_id, pooling
    self.embed = nnx.Embed(vocab_size, embed_dim, rngs=rngs)
    directions = 2 if bidirectional else 1
    layers = []
    for i in range(num_layers):
      in_features = embed_dim if i == 0 else hidden_size * directions
      layers.append(nnx.List([MaskedRNN(cell, in_features, hidden_size, reverse=bool(d), rngs=rngs)
                              for d in range(directions)]))
    self.layers = nnx.List(layers)
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(hidden_size * directions, num_classes, rngs=rngs)

  def __call__(self, tokens: jax.Array, mask: jax.Array | None = None, *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    mask = (tokens != self.pad_id) if mask is None else mask.astype(bool)
    return self.from_embeddings(self.embed(tokens), mask, train=train, rngs=rngs)

  def from_embeddings(self, x: jax.Array, mask: jax.Array, *, train: bool = False,
                      rngs: nnx.Rngs | None = None) -> jax.Array:
    """Logits from token embeddings float[B, T, embed_dim] (`self.embed(tokens)`) and mask bool[B, T]: the rest
    of `__call__`, where research/explain attributes a prediction to each token's embedding."""
    drop = lambda y: self.dropout(y, deterministic=not train, rngs=rngs)
    x = drop(x)
    for i, directions in enumerate(self.layers):
      if i:
        x = drop(x)
      results = [rnn(x, mask) for rnn in directions]
      x = jnp.concatenate([outputs for outputs, _ in results], axis=-1)
      last = jnp.concatenate([h for _, h in results], axis=-1)
    if self.pooling == "last":
      pooled = last
    elif self.pooling == "mean":
      pooled = masked_mean(x, mask)
    else:
      pooled = jnp.max(jnp.where(mask[..., None], x, -jnp.inf), axis=1)
      pooled = jnp.where(jnp.isfinite(pooled), pooled, 0.0)  # an all-padding row pools to 0
    return self.head(drop(pooled))


@MODELS.register("rnn")
def build_rnn(config, sample: jnp.ndarray, rngs: nnx.Rngs) -> RNNClassifier:
  """Sized by `config.model` (see the module docstring); `sample` (tokens int[B, T]) is not needed."""
  return RNNClassifier(
      config.vocab_size, config.num_classes, cell=config.cell, embed_dim=config.embed_dim,
      hidden_size=config.hidden_size, num_layers=config.num_layers, bidirectional=config.bidirectional,
      pooling=config.pooling, dropout=config.dropout, pad_id=config.pad_id, rngs=rngs)
