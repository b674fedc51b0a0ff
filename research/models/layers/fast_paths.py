"""The switch for the library's fast formulations of standard layers (on by default).

Some layers have a second formulation that computes the same function as the
textbook one but runs faster under XLA:CPU (measurements: the README's
"The CPU investigation"): `max_pool` as a tree of elementwise maxima over strided slices,
`BatchNorm`'s training-mode backward pass as one closed-form expression (and
its batch statistics in one fused pass), and
attention with plain batched matmuls and a closed-form softmax backward
(research/models/layers/attention_core.py; on NVIDIA GPUs, bfloat16 causal
attention through cuDNN's fused kernel).
`config.fast_paths = False` (applied when the model is built, see
research/train/experiment.py) selects the reference formulations, e.g. to rule
them out when debugging; tests/test_fast_paths.py holds the two equal.
The switch is read while a function is traced, so it applies to every step
jitted after it is set. Exported artifacts are traced inside `reference()`.
"""

from __future__ import annotations

import contextlib

_enabled = True


def enabled() -> bool:
  return _enabled


def set_enabled(value: bool) -> None:
  global _enabled
  _enabled = bool(value)


@contextlib.contextmanager
def reference():
  """The reference formulations inside the block, the previous setting after it."""
  previous = _enabled
  set_enabled(False)
  try:
    yield
  finally:
    set_enabled(previous)
