"""XLA flags the library sets by default, before JAX starts its backend.

On XLA:CPU, jaxlib 0.10 hands work to YNNPACK in two ways that made the
library's models slower (measurements: the README's "The CPU investigation"):
  - convolutions: YNNPACK's kernel gradient (the backward pass with respect to
    the filter) ran 7-9x slower than XLA's own (Eigen) convolution for the
    small-channel 3x3 layers of the zoo's CNN and ResNet (135 ms vs 19 ms for a
    128x28x28x16 -> 16 layer); forward and input gradients took the same time;
  - reductions: a YNNPACK "reduce" fusion swallows a LayerNorm's reductions
    with the matmuls and GELUs around them into one graph that ran 2x slower
    than XLA's separate kernels (the benchmark Transformer's forward pass:
    120-140 ms vs 62-65 ms); training steps and the MLP/CNN did not change.
So both stay with XLA. Matmuls still go to YNNPACK. The flag only concerns
the CPU backend.

`import research` applies these unless XLA_FLAGS already sets the same flag
(your value wins) or RESEARCH_XLA_DEFAULTS=0 is in the environment. They take
effect only if JAX has not yet started its backend in this process (the
library's scripts import research first).
"""

from __future__ import annotations

import os
from typing import MutableMapping

DEFAULTS = {"--xla_cpu_experimental_ynn_fusion_type": "-individual_convolution,-reduce"}


def apply(environ: MutableMapping[str, str] = os.environ) -> None:
  if environ.get("RESEARCH_XLA_DEFAULTS", "1") == "0":
    return
  flags = environ.get("XLA_FLAGS", "")
  missing = [f"{name}={value}" for name, value in DEFAULTS.items() if name not in flags]
  if missing:
    environ["XLA_FLAGS"] = " ".join([flags, *missing]).strip()
