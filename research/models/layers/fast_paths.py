"""Fast formulations of standard layers: a setting of each model, on by default.

Some layers have a second formulation that computes the same function as the
textbook one but runs faster under XLA:CPU (docs/performance.md): `max_pool`
as a tree of elementwise maxima over strided slices, `BatchNorm`'s
training-mode backward pass as one closed-form expression (and its batch
statistics in one fused pass), and attention with plain batched matmuls and a
closed-form softmax backward (research/models/layers/attention_core.py; on
NVIDIA GPUs, bfloat16 causal attention through cuDNN's fused kernel).

A layer with a fast formulation has a `fast_paths` attribute (a plain bool, so
it is part of the module's graph definition, and a jitted function of the model
traces again when it changes). `configure(model, enabled)` sets it on every
such layer of a model: `config.fast_paths = False` does this when the model is
built (research/train/experiment.py), e.g. to rule the fast paths out when
debugging, and exported artifacts use the reference formulations
(research/export/model.py). Two models with different settings live side by
side in one process; tests/test_fast_paths.py holds the two formulations equal.
"""

from __future__ import annotations

from flax import nnx

ATTRIBUTE = "fast_paths"


def configure(model: nnx.Module, enabled: bool) -> nnx.Module:
  """Sets the fast paths of every layer of `model` that has them; returns `model`."""
  for _, module in nnx.iter_modules(model):
    if hasattr(module, ATTRIBUTE):
      setattr(module, ATTRIBUTE, bool(enabled))
  return model


def enabled(model: nnx.Module) -> list[bool]:
  """The setting of each layer of `model` that has fast paths (empty if none has)."""
  return [getattr(m, ATTRIBUTE) for _, m in nnx.iter_modules(model) if hasattr(m, ATTRIBUTE)]
