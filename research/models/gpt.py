"""GPT-style decoder language model: causal self-attention, pre-LayerNorm, learned positions.

    model = GPT(vocab_size=256, block_size=128, num_layers=4, num_heads=4, embed_dim=128, rngs=nnx.Rngs(0))
    logits = model(tokens)                       # int[B, T] -> float32[B, T, vocab], T <= block_size
    text_ids = generate(model, prompt, 100, rng=jax.random.key(0), temperature=0.8, top_k=20)

Generation samples one token at a time with a KV cache: the prompt is run once
(prefill) and writes every layer's keys and values into the cache; each new
token then attends to the cache (incremental decode) inside one jitted
`lax.scan`. Cached decoding computes the same logits as a full forward pass.

Training (`GPT.loss`) reads `batch["tokens"]`, int[B, L] windows of text
(research/data/shakespeare.py gives L = 257). Tokens 1..L-1 are the targets,
each predicted from the tokens before it; when L - 1 > block_size the window is
cut into (L - 1) / block_size chunks of block_size targets, each predicted from
the context inside its chunk only.
"""

from __future__ import annotations

import functools
import math
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research import metrics
from research.errors import ConfigError
from research.models.layers import remat
from research.models.layers.attention_core import attention_weights, dot_product_attention, split_heads
from research.sharding import constrain_batch
from research.registry import MODELS

Cache = list[dict[str, jax.Array]]  # per layer: {"k", "v": float[B, max_len, heads, head_dim]}


class CausalSelfAttention(nnx.Module):
  """Multi-head self-attention where position t attends to positions <= t.

  :Inputs:  float[B, T, dim]; optionally a layer cache {"k", "v": float[B, S, heads, head_dim]} and the
           position `index` of x's first token in it (int: every row; int[B]: each row's own).
  :Outputs: (float[B, T, dim], the updated cache or None).
  """

  fast_paths: bool = True  # research/models/layers/fast_paths.py
  capture_weights: bool = False  # sow the attention probabilities (research/explain/attention.py); off in training

  def __init__(self, dim: int, num_heads: int, *, dropout: float, residual_init, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ConfigError(f"model.embed_dim={dim} must be divisible by model.num_heads={num_heads}.")
    init = nnx.initializers.normal(0.02)
    self.num_heads, self.head_dim = num_heads, dim // num_heads
    self.qkv_heads = nnx.Linear(dim, 3 * dim, kernel_init=init, rngs=rngs)  # laid out by head: split_heads
    self.proj = nnx.Linear(dim, dim, kernel_init=residual_init, rngs=rngs)
    self.attn_dropout = nnx.Dropout(dropout)
    self.resid_dropout = nnx.Dropout(dropout)

  def __call__(self, x, *, train=False, rngs=None, cache=None, index=0):
    b, t, dim = x.shape
    q, k, v = split_heads(self.qkv_heads(x), self.num_heads)
    if cache is None:  # Full pass: attend within x, causally.
      keys, values, mask = k, v, None
    else:  # Write this step's keys/values at each row's `index`, attend to the whole cache (future slots masked).
      starts = jnp.broadcast_to(jnp.asarray(index, jnp.int32), (b,))  # rows sharing a step sit at their own places
      keys, values = _write_rows(cache["k"], k, starts), _write_rows(cache["v"], v, starts)
      cache = {"k": keys, "v": values}
      mask = jnp.arange(keys.shape[1])[None, None, :] <= (starts[:, None] + jnp.arange(t))[:, :, None]  # [B, T, S]
      mask = mask[:, None]  # [B, 1 (heads), T, S]
    if self.capture_weights:
      self.sow(nnx.Intermediate, "attention_weights", attention_weights(q, keys, mask, is_causal=cache is None))
    dropout = partial(self.attn_dropout, rngs=rngs) if train and self.attn_dropout.rate > 0 else None
    out = dot_product_attention(q, keys, values, mask, dropout, is_causal=cache is None,
                                fast=self.fast_paths).reshape(b, t, dim)
    return self.resid_dropout(self.proj(out), deterministic=not train, rngs=rngs), cache


def _write_rows(cache: jax.Array, x: jax.Array, starts: jax.Array) -> jax.Array:
  """float[B, S, ...] with each row's x float[B, T, ...] written at its own start position."""
  write = lambda row, new, start: jax.lax.dynamic_update_slice(row, new.astype(row.dtype), (start, 0, 0))
  return jax.vmap(write)(cache, x, starts)


class Block(nnx.Module):
  """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x)). float[B, T, dim] -> same."""

  def __init__(self, dim: int, num_heads: int, mlp_ratio: int, *, dropout: float, residual_init, rngs: nnx.Rngs):
    init = nnx.initializers.normal(0.02)
    self.ln1 = nnx.LayerNorm(dim, epsilon=1e-5, rngs=rngs)
    self.attn = CausalSelfAttention(dim, num_heads, dropout=dropout, residual_init=residual_init, rngs=rngs)
    self.ln2 = nnx.LayerNorm(dim, epsilon=1e-5, rngs=rngs)
    self.fc = nnx.Linear(dim, mlp_ratio * dim, kernel_init=init, rngs=rngs)
    self.fc_out = nnx.Linear(mlp_ratio * dim, dim, kernel_init=residual_init, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)

  def __call__(self, x, *, train=False, rngs=None, cache=None, index=0):
    x = constrain_batch(x)  # rows split like the batch between blocks, whatever the weights' layout
    attended, cache = self.attn(self.ln1(x), train=train, rngs=rngs, cache=cache, index=index)
    x = x + attended
    hidden = self.fc_out(jax.nn.gelu(self.fc(self.ln2(x))))
    return x + self.dropout(hidden, deterministic=not train, rngs=rngs), cache


class GPT(nnx.Module):
  """Decoder-only language model.

  Inputs:  int[B, T] token ids, T <= block_size.
  Outputs: float32[B, T, vocab_size] logits; position t's logits predict token t + 1.

  `tie_embeddings=True` reuses the token embedding matrix as the output layer.
  `sample_*` fields set the text that `summaries` logs at each evaluation.
  """

  remat: str = "none"  # the blocks' rematerialization policy (research/models/layers/remat.py)

  def __init__(self, vocab_size: int, block_size: int, num_layers: int, num_heads: int, embed_dim: int, *,
               mlp_ratio: int = 4, dropout: float = 0.0, tie_embeddings: bool = True, rngs: nnx.Rngs,
               sample_prompt_length: int = 32, sample_tokens: int = 0, sample_temperature: float = 0.8,
               sample_top_k: int = 0):
    init = nnx.initializers.normal(0.02)
    residual_init = nnx.initializers.normal(0.02 / math.sqrt(2 * num_layers))  # GPT-2's scaled residual init
    self.vocab_size, self.block_size, self.tie_embeddings = vocab_size, block_size, tie_embeddings
    self.token_embed = nnx.Embed(vocab_size, embed_dim, embedding_init=init, rngs=rngs)
    self.pos_embed = nnx.Embed(block_size, embed_dim, embedding_init=init, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.blocks = nnx.List([Block(embed_dim, num_heads, mlp_ratio, dropout=dropout, residual_init=residual_init,
                                  rngs=rngs) for _ in range(num_layers)])
    self.ln_f = nnx.LayerNorm(embed_dim, epsilon=1e-5, rngs=rngs)
    self.head = None if tie_embeddings else nnx.Linear(embed_dim, vocab_size, use_bias=False, kernel_init=init,
                                                        rngs=rngs)
    self.sample_prompt_length, self.sample_tokens = sample_prompt_length, sample_tokens
    self.sample_temperature, self.sample_top_k = sample_temperature, sample_top_k

  def __call__(self, tokens: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> jax.Array:
    return self.forward(tokens, train=train, rngs=rngs)[0]

  def forward(self, tokens, *, train=False, rngs=None, cache: Cache | None = None, index=0):
    """Logits of int[B, T] tokens at positions index..index+T-1: (float32[B, T, vocab], updated cache or None).

    With a cache (from `init_cache`), keys and values of these positions are written into it and
    the tokens attend to every earlier position held there. `index` is an int (every row) or int[B] (a
    position per row: streams at different places share one decode step).
    """
    t = tokens.shape[1]
    if cache is None and t > self.block_size:
      raise ValueError(f"a sequence of {t} tokens is longer than block_size={self.block_size}.")
    index = jnp.asarray(index)
    positions = (index[:, None] if index.ndim else index) + jnp.arange(t)  # [B, T] or [T]
    x = self.token_embed(tokens.astype(jnp.int32)) + self.pos_embed(positions)  # [B, T, dim] + [(B,) T, dim]
    x = self.dropout(x, deterministic=not train, rngs=rngs)
    new_cache = []
    for i, block in enumerate(self.blocks):
      x, layer_cache = remat.call(self.remat, block, x, train=train, rngs=rngs,
                                  cache=None if cache is None else cache[i], index=index)
      new_cache.append(layer_cache)
    x = self.ln_f(x)
    logits = self.token_embed.attend(x) if self.tie_embeddings else self.head(x)
    return logits.astype(jnp.float32), (None if cache is None else new_cache)

  def init_cache(self, batch_size: int, max_length: int, dtype=jnp.float32) -> Cache:
    """An empty KV cache for `max_length` (<= block_size) positions."""
    if max_length > self.block_size:
      raise ValueError(f"cannot cache {max_length} positions: block_size is {self.block_size}.")
    attn = self.blocks[0].attn
    shape = (batch_size, max_length, attn.num_heads, attn.head_dim)
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in self.blocks]

  def loss(self, batch, *, train: bool, rngs: nnx.Rngs | None = None):
    """Next-token cross-entropy over `batch["tokens"]` (int[B, L]), in nats per token.

    Returns (mean loss, sums) with sums = {"loss_sum": total nats, "count": number of target tokens},
    counting only rows whose `batch["mask"]` (eval batches) is 1.
    """
    tokens = batch["tokens"].astype(jnp.int32)
    b, length = tokens.shape
    targets_per_row = length - 1
    chunks = targets_per_row // self.block_size if targets_per_row > self.block_size else 1
    if targets_per_row % chunks or targets_per_row // chunks > self.block_size:
      raise ConfigError(f"windows of {length} tokens have {targets_per_row} targets; model.block_size="
                        f"{self.block_size} must be >= that or divide it.")
    inputs = tokens[:, :-1].reshape(b * chunks, -1)
    targets = tokens[:, 1:].reshape(b * chunks, -1)
    logits = self(inputs, train=train, rngs=rngs).astype(jnp.float32)  # (bfloat16 under mixed precision)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]  # [B * chunks, block]
    mask = batch.get("mask")
    weights = jnp.ones((b,), jnp.float32) if mask is None else mask.astype(jnp.float32)
    weights = jnp.repeat(weights, chunks)[:, None]
    loss_sum = jnp.sum(nll * weights)
    count = jnp.sum(weights) * nll.shape[1]
    return loss_sum / jnp.maximum(count, 1.0), {"loss_sum": loss_sum, "count": count}

  def summarize(self, sums) -> dict[str, float]:
    """Summed eval metrics -> loss (nats per token), perplexity (exp of it) and bits per token."""
    out = metrics.summarize(sums)
    out["perplexity"] = float(np.exp(out["loss"]))
    out["bits_per_token"] = out["loss"] / math.log(2)
    return out

  def export_fn(self, batch):
    """What research/export deploys: logits float32[B, T, vocab] of a context of T = block_size tokens,
    checked on the first block_size tokens of real eval windows."""
    return _logits, {"tokens": np.asarray(batch["tokens"][:, :self.block_size], np.int32)}

  def summaries(self, batch, rng) -> dict[str, str]:
    """A text sample for TensorBoard: the first `sample_prompt_length` tokens of the first eval window,
    continued by `sample_tokens` sampled tokens (seeded by `rng`)."""
    from research.data.shakespeare import decode  # Byte ids -> text.

    num_tokens = self.sample_tokens or self.block_size - self.sample_prompt_length
    prompt = np.asarray(batch["tokens"][:1, :self.sample_prompt_length], np.int32)
    ids = generate(self, prompt, num_tokens, rng=rng, temperature=self.sample_temperature, top_k=self.sample_top_k)
    prompt_text, continuation = decode(ids[0, :prompt.shape[1]]), decode(ids[0, prompt.shape[1]:])
    text = f"{prompt_text}[{continuation}]"  # the prompt, then the model's continuation in brackets
    return {"samples/text": "\n".join("    " + line for line in text.split("\n"))}  # markdown code block


def _logits(model: GPT, tokens: jax.Array) -> jax.Array:
  return model(tokens, train=False)


def sample_logits(logits: jax.Array, key: jax.Array, temperature=1.0, top_k=0) -> jax.Array:
  """Draws one token per row of float[..., vocab] logits: int32[...].

  Draws from softmax(logits / temperature); temperature 0 is greedy (argmax); top_k > 0 keeps only the
  k most likely tokens before sampling (top_k=1 is greedy too). Both may be traced values, so one
  compiled program serves every setting.
  """
  temperature = jnp.asarray(temperature, jnp.float32)
  top_k = jnp.asarray(top_k, jnp.int32)
  vocab = logits.shape[-1]
  kth = jnp.take(jnp.sort(logits, axis=-1), vocab - jnp.clip(top_k, 1, vocab), axis=-1)[..., None]
  logits = jnp.where((top_k > 0) & (logits < kth), -jnp.inf, logits)
  sampled = jax.random.categorical(key, logits / jnp.where(temperature > 0, temperature, 1.0), axis=-1)
  return jnp.where(temperature > 0, sampled, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


def decoder(model: GPT) -> tuple[Callable, Callable, list[np.ndarray]]:
  """Pure functions of a flat list of weights, for `jax.jit` and `jax.export` alike, and those weights:

      prefill(weights, tokens int32[B, block_size]) -> (logits float32[B, block_size, vocab], k, v)
      decode(weights, k, v, token int32[B], index int32[B]) -> (logits float32[B, vocab], k, v)

  `k`, `v` float32[layers, B, block_size, heads, head_dim] are the KV cache; `decode` writes row b's token at
  position `index[b]` and attends to that row's positions <= index[b], so rows at different places (streams
  that started at different times) share one step. Prefill a context padded to block_size: causal attention
  keeps the padding out of every real position's logits.
  """
  graphdef, rng_state, state = nnx.split(model, nnx.RngState, ...)
  leaves, treedef = jax.tree.flatten(state)
  prefill, decode = _functions(graphdef, treedef)
  rng_state = jax.device_get(rng_state)  # unused at inference; kept so the graph merges back whole
  return (partial(prefill, rng_state), partial(decode, rng_state),
          [np.asarray(jax.device_get(leaf)) for leaf in leaves])


def _functions(graphdef, treedef) -> tuple[Callable, Callable]:
  def merged(rng_state, weights) -> GPT:
    return nnx.merge(graphdef, rng_state, jax.tree.unflatten(treedef, list(weights)))

  def prefill(rng_state, weights, tokens):
    m = merged(rng_state, weights)
    logits, cache = m.forward(tokens, cache=m.init_cache(tokens.shape[0], m.block_size), index=0)
    return (logits, *_stacked(cache))

  def decode(rng_state, weights, k, v, token, index):
    cache = [{"k": k[i], "v": v[i]} for i in range(k.shape[0])]
    logits, cache = merged(rng_state, weights).forward(token[:, None], cache=cache, index=index)
    return (logits[:, -1], *_stacked(cache))

  return prefill, decode


@functools.lru_cache(maxsize=16)
def _jitted(graphdef, treedef) -> tuple[Callable, Callable]:
  """Compiled once per model structure (training's text samples call `generate` at every evaluation)."""
  return tuple(jax.jit(f) for f in _functions(graphdef, treedef))


def _stacked(cache: Cache) -> tuple[jax.Array, jax.Array]:
  return jnp.stack([c["k"] for c in cache]), jnp.stack([c["v"] for c in cache])


def sliding_generate(prefill: Callable, decode: Callable, prompt, num_tokens: int, *, block_size: int,
                     rng: jax.Array, temperature: float = 1.0, top_k: int = 0,
                     on_tokens: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
  """Continues int[B, P] `prompt` by `num_tokens` tokens: int32[B, P + num_tokens].

  `prefill(tokens)` and `decode(k, v, token, index)` are `decoder`'s functions with the weights bound (jitted
  in-process, or deserialized from an export). Token i is drawn with `fold_in(rng, i)`. Positions are learned,
  so a context holds at most block_size tokens: when the cache is full, the last block_size // 2 tokens are
  prefilled again at positions 0.. (a sliding window) and decoding goes on. `on_tokens` sees each new token
  column as it is drawn (for streaming).
  """
  tokens = np.asarray(prompt, np.int32)
  if tokens.ndim != 2 or tokens.shape[1] < 1:
    raise ValueError(f"the prompt must be int[B, P] with P >= 1 tokens, got shape {tokens.shape}.")
  temperature, top_k = jnp.float32(temperature), jnp.int32(top_k)

  def start(context: np.ndarray):
    return (*prefill_context(prefill, context, block_size), context.shape[1])

  last, k, v, position = start(tokens[:, -block_size:])
  drawn = []
  for i in range(num_tokens):
    token = np.asarray(_sample(last, jax.random.fold_in(rng, i), temperature, top_k))
    drawn.append(token)
    if on_tokens is not None:
      on_tokens(token)
    if i == num_tokens - 1:
      break
    if position == block_size:  # the window is full: slide it
      last, k, v, position = start(slid(np.concatenate([tokens, np.stack(drawn, 1)], 1), block_size))
    else:
      last, k, v = decode(k, v, token, np.full(len(tokens), position, np.int32))
      position += 1
  return np.concatenate([tokens, np.stack(drawn, 1).astype(np.int32)], 1) if drawn else tokens


_sample = jax.jit(sample_logits)


def prefill_context(prefill: Callable, context: np.ndarray, block_size: int):
  """(the last position's logits float32[B, vocab], k, v) of int[B, P <= block_size] `context`, padded."""
  padded = np.zeros((len(context), block_size), np.int32)
  padded[:, :context.shape[1]] = context
  logits, k, v = prefill(padded)
  return logits[:, context.shape[1] - 1], k, v


def slid(history: np.ndarray, block_size: int) -> np.ndarray:
  """The context a full window slides to: the last block_size // 2 tokens of int[..., T] `history`."""
  return history[..., -(block_size // 2):]


@jax.jit
def sample_rows(logits, key_data, steps, temperature, top_k):
  """One token per row of float[B, vocab] logits, each row with its own stream's settings: row b is drawn exactly
  as `sliding_generate` draws token steps[b] of a one-row prompt seeded with `jax.random.key_data(key)` key_data[b]
  (uint32[B, 2]), temperature[b] and top_k[b]. Returns int32[B]."""
  def row(logits, data, step, temperature, top_k):
    key = jax.random.fold_in(jax.random.wrap_key_data(data), step)
    return sample_logits(logits[None], key, temperature, top_k)[0]

  return jax.vmap(row)(logits, key_data, steps, temperature, top_k)


def generate(model: GPT, prompt, num_tokens: int, *, rng: jax.Array, temperature: float = 1.0,
             top_k: int = 0, on_tokens: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
  """Continues int[B, P] `prompt` by `num_tokens` sampled tokens: int32[B, P + num_tokens] (numpy).

  Seeded: token i is drawn with `fold_in(rng, i)`, so the same rng gives the same text. Prefill, then one
  cached decode step per token; past block_size tokens the context slides (see `sliding_generate`), so any
  length works. An export's generation (research/serve/generate.py) runs the same loop on the exported
  functions and gives the same tokens.
  """
  graphdef, rng_state, state = nnx.split(model, nnx.RngState, ...)
  leaves, treedef = jax.tree.flatten(state)
  prefill, decode = _jitted(graphdef, treedef)
  return sliding_generate(lambda t: prefill(rng_state, leaves, t),
                          lambda k, v, t, i: decode(rng_state, leaves, k, v, t, i),
                          prompt, num_tokens, block_size=model.block_size, rng=rng, temperature=temperature,
                          top_k=top_k, on_tokens=on_tokens)


@MODELS.register("gpt")
def build_gpt(config, sample: jnp.ndarray, rngs: nnx.Rngs) -> GPT:
  """`config.model` fields: vocab_size, block_size, num_layers, num_heads, embed_dim, mlp_ratio, dropout,
  tie_embeddings, sample_prompt_length, sample_tokens, sample_temperature, sample_top_k.
  `sample` is int[B, L] token windows; block_size must be >= L - 1 or divide it."""
  targets = int(sample.shape[-1]) - 1
  if targets > config.block_size and targets % config.block_size:
    raise ConfigError(f"model.block_size={config.block_size} must divide the {targets} targets of each "
                      f"{targets + 1}-token window (e.g. 32, 64, 128 or 256 for Shakespeare).")
  if config.sample_prompt_length >= config.block_size:
    raise ConfigError(f"model.sample_prompt_length={config.sample_prompt_length} must be < model.block_size.")
  return GPT(config.vocab_size, config.block_size, config.num_layers, config.num_heads, config.embed_dim,
             mlp_ratio=config.mlp_ratio, dropout=config.dropout, tie_embeddings=config.tie_embeddings, rngs=rngs,
             sample_prompt_length=config.sample_prompt_length, sample_tokens=config.sample_tokens,
             sample_temperature=config.sample_temperature, sample_top_k=config.sample_top_k)
