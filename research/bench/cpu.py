"""The CPU investigation: XLA:CPU flags and the library's fast formulations, measured on the training benchmark.

Each experiment runs the hand-written jax.jit loop of research/bench/train.py
(the library's own models, so `config.fast_paths` applies) for the CNN and the
Transformer in a fresh process with its XLA_FLAGS, interleaved with the others
and repeated; the table reports medians and the ratio to the default. Flags
that did not help stay in the table: that is the record of what was tried.
"""

from __future__ import annotations

import statistics

from research.bench.timing import machine, table
from research.bench.train import SPECS, measure

# (what, environment, config.fast_paths). `import research` adds research/xla_flags.py's defaults to XLA_FLAGS
# unless RESEARCH_XLA_DEFAULTS=0, so every row but the second keeps convolutions away from YNNPACK.
EXPERIMENTS = [
    ("default: fast paths on, convolutions by XLA (research/xla_flags.py)", {}, True),
    ("convolutions by YNNPACK (jaxlib's default; `RESEARCH_XLA_DEFAULTS=0`)", {"RESEARCH_XLA_DEFAULTS": "0"}, True),
    ("`config.fast_paths=False` (reference max-pool and BatchNorm backward)", {}, False),
    ("convolutions by XNNPACK", {"XLA_FLAGS": "--xla_cpu_experimental_xnn_fusion_type=+individual_convolution"}, True),
    ("oneDNN fusions (dot, eltwise, reduce)",
     {"XLA_FLAGS": "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce"}, True),
    ("oneDNN (`--xla_cpu_use_onednn=true`)", {"XLA_FLAGS": "--xla_cpu_use_onednn=true"}, True),
    ("fast math", {"XLA_FLAGS": "--xla_cpu_enable_fast_math=true"}, True),
]
MODELS = ("cnn", "transformer")


def run(quick: bool = False) -> str:
  steps, repeats = (4, 1) if quick else (60, 2)
  experiments = EXPERIMENTS[:2] if quick else EXPERIMENTS
  rates: dict[tuple[str, int], list[float]] = {}
  errors: dict[tuple[str, int], str] = {}
  for _ in range(repeats):
    for model in MODELS:
      for i, (_, env, fast) in enumerate(experiments):  # interleaved: machine noise hits every row alike
        result = measure("hand_jax", model, steps, env=env, fast_paths=fast)
        if "examples_per_sec" in result:
          rates.setdefault((model, i), []).append(result["examples_per_sec"])
        else:
          errors[(model, i)] = result["error"]
  rows = []
  for i, (what, env, fast) in enumerate(experiments):
    row = [what, " ".join(f"`{k}={v}`" for k, v in env.items())]
    for model in MODELS:
      if (model, i) not in rates:
        row += [errors.get((model, i), "failed"), ""]
        continue
      rate, base = statistics.median(rates[(model, i)]), statistics.median(rates[(model, 0)])
      row += [f"{rate:,.0f}", f"{rate / base:.2f}x"]
    rows.append(row)
  header = ["experiment", "environment"]
  for model in MODELS:
    header += [f"{model} ex/s", f"{model} vs default"]
  shapes = "; ".join(f"{m}: batch {SPECS[m]['batch']}" for m in MODELS)
  return (f"Hand-written jax.jit training loop of the library's models ({shapes}), examples/s, median of "
          f"{repeats} interleaved runs of {steps} steps, each in its own process.\nMachine: {machine()}.\n\n"
          + table(header, rows))
