"""Token attributions of a text classifier: integrated gradients along the token embeddings.

A text model (research/models/transformer.py, rnn.py) computes `from_embeddings(embed(tokens), mask)`;
the path runs from all-zero embeddings to the tokens' own, with the padding mask and the position
encodings as they are, and each token's attribution is the sum of its embedding's attributions.
Padding gets exactly 0 (no gradient reaches a masked position).
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from research.data import ops
from research.data.tokenizers import PAD_ID
from research.errors import ConfigError
from research.explain import attribution
from research.explain import model as model_lib
from research.registry import OPS


@dataclasses.dataclass
class TokenAttribution:
  tokens: np.ndarray  # int32[N, L], the model's input
  mask: np.ndarray  # bool[N, L], True on real tokens
  scores: np.ndarray  # float32[N, L], each token's attribution to its example's target logit
  result: attribution.Attribution  # per embedding coordinate, with f(x), f(baseline) and the completeness delta


def is_text_model(model: nnx.Module) -> bool:
  return hasattr(model, "from_embeddings") and hasattr(model, "embed")


def embeddings(model: nnx.Module, tokens: np.ndarray) -> np.ndarray:
  return np.asarray(model.embed(jnp.asarray(tokens)), np.float32)  # a table lookup: no compilation needed


def token_attributions(model: nnx.Module, tokens: np.ndarray, target: np.ndarray, **options) -> TokenAttribution:
  """Integrated gradients of each row's `target` logit over its tokens int[N, L] (`options`: steps, method,
  batch_points of `attribution.integrated_gradients`)."""
  mask = np.asarray(tokens) != model.pad_id
  f, state = model_lib.pure(model, "from_embeddings")
  x = embeddings(model, tokens)
  result = attribution.integrated_gradients(f, state, x, np.zeros_like(x), target, (mask,), **options)
  scores = np.where(mask, result.attributions.sum(-1), 0.0).astype(np.float32)
  return TokenAttribution(np.asarray(tokens), mask, scores, result)


def tokenizer(config, workdir: str | Path):
  """(the run's fitted HF tokenizer, padded and truncated as in training, the text column it reads)."""
  for i, (name, args, kwargs) in enumerate(ops.parse(config.data.preprocess)):
    if name == "tokenize":
      op = OPS.get(name)
      bound = inspect.signature(op.__call__).bind(None, None, None, *args, **kwargs)  # batch, state, assets_dir
      bound.apply_defaults()
      options = bound.arguments
      state = ops.fit_states(config.data.preprocess, None, workdir)[f"{i}:{name}"]
      return op.tokenizer(state, Path(workdir), options["max_length"], options["truncation_side"]), options["key"]
  raise ConfigError(f"the run's preprocessing {config.data.preprocess!r} has no tokenize op: its texts cannot be "
                    f"split into tokens to attribute to.")


def spans(tokenizer, texts, tokens: np.ndarray) -> list[list[tuple[int, int]]]:
  """Each row's (start, end) character offsets of its real tokens in its text (after cleaning), checked to be the
  tokens the model read."""
  found = []
  for text, row in zip(texts, tokens):
    encoding = tokenizer.encode(str(text))
    real = [i for i, m in zip(encoding.ids, encoding.attention_mask) if m]
    if real != [int(t) for t in row if t != PAD_ID]:
      raise ConfigError("the tokenizer's encoding differs from the tokens the model read; is the run's "
                        "tokenizer.json its own?")
    found.append([tuple(o) for o, m in zip(encoding.offsets, encoding.attention_mask) if m])
  return found
