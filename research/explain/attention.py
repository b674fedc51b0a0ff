"""Attention maps: the probabilities every attention layer of a model gives each head, per layer.

Attention layers (research/models/layers/attention.py, the GPT's CausalSelfAttention) have a
`capture_weights` switch, off by default: training and export never compute anything extra. With it
on, a layer sows `attention_weights(q, k, mask)` (research/models/layers/attention_core.py), the
probabilities of the reference formulation, which the fast paths compute without materializing.

    maps = attention_maps(model, tokens)     # [float32[B, heads, L, L] for each layer, in order]
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from research import atomic
from research.explain import render

ATTRIBUTE = "capture_weights"
SOWN = "attention_weights"  # the nnx.Intermediate the layers sow


def attention_layers(model: nnx.Module) -> list[nnx.Module]:
  """The layers of `model` that can capture their attention probabilities, in the order they run."""
  return [m for _, m in nnx.iter_modules(model) if hasattr(m, ATTRIBUTE)]


def capturing(model: nnx.Module) -> nnx.Module:
  """A copy of `model` whose attention layers sow their probabilities (the original is left as it is)."""
  copy = nnx.clone(model)
  for layer in attention_layers(copy):
    setattr(layer, ATTRIBUTE, True)
  return copy


def attention_maps(model: nnx.Module, tokens, **kwargs) -> list[np.ndarray]:
  """Each attention layer's probabilities float32[B, heads, L_query, L_key] when `model(tokens, **kwargs)` runs
  (in eval mode); masked keys have probability 0."""
  capture = capturing(model)
  paths = [path for path, m in nnx.iter_modules(capture) if hasattr(m, ATTRIBUTE)]
  if not paths:
    raise ValueError(f"{type(model).__name__} has no attention layers to draw maps of.")
  graphdef, state = nnx.split(capture)

  @jax.jit
  def run(state, tokens):
    forward = nnx.capture(lambda m, tokens: m(tokens, train=False, **kwargs), nnx.Intermediate)
    _, sown = forward(nnx.merge(graphdef, state), tokens)
    flat = dict(nnx.to_flat_state(sown))
    return [flat[(*path, SOWN)].get_value()[-1] for path in paths]

  return [np.asarray(m) for m in run(state, tokens)]


def byte_labels(ids) -> list[str]:
  """Readable labels of byte tokens (the GPT's): printable characters as they are, a space as '·', others as \\xNN
  (Pillow's default font has no glyphs for the usual symbols of blanks)."""
  shown = {ord(" "): "\u00b7", ord("\n"): "\\n", ord("\t"): "\\t"}
  return [shown.get(int(b), chr(int(b)) if 32 < int(b) < 127 else f"\\x{int(b):02x}") for b in ids]


def write(out: Path, maps: list[np.ndarray], labels: list[str], title: str) -> list[Path]:
  """One example's maps (per layer float[heads, L, L], L = len(labels)) as OUT/layer<i>.png, a grid of the heads,
  OUT/attention.npy float32[layers, heads, L, L] and OUT/tokens.json (the labels)."""
  out.mkdir(parents=True, exist_ok=True)
  written = []
  for i, layer in enumerate(maps):
    path = out / f"layer{i}.png"
    with atomic.replacing(path) as tmp:
      render.attention_grid(layer, labels, f"{title}: layer {i}").save(tmp, format="PNG")
    written.append(path)
  array = out / "attention.npy"
  with atomic.replacing(array) as tmp, open(tmp, "wb") as file:
    np.save(file, np.stack(maps).astype(np.float32))
  atomic.write_text(out / "tokens.json", json.dumps(labels, ensure_ascii=False) + "\n")
  return [*written, array, out / "tokens.json"]


def write_all(model: nnx.Module, tokens: np.ndarray, lengths: list[int], labels: list[list[str]], names: list[str],
              out: Path) -> list[Path]:
  """The maps of every row of int[N, L] `tokens` (its first lengths[i] positions, labelled labels[i]) in
  OUT/<name>/, each example's own folder. A position the model adds in front (a [CLS] vector) comes first."""
  from research.explain.images import slugs

  maps = attention_maps(model, tokens)
  extra = maps[0].shape[-1] - tokens.shape[1]  # e.g. 1 for a transformer with cls pooling
  written = []
  for i, (name, stem) in enumerate(zip(names, slugs(names))):
    n = extra + lengths[i]
    written += write(out / stem, [layer[i, :, :n, :n] for layer in maps], ["[CLS]"] * extra + labels[i], name)
  return written
