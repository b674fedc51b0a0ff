"""The CPU investigation: XLA:CPU flags and the library's fast formulations, measured on the training benchmark.

Each experiment runs the hand-written jax.jit loop of research/bench/train.py
(the library's own models, so `config.fast_paths` applies) for the CNN and the
Transformer, and the Transformer's forward pass, in a fresh process with its
environment, interleaved with the others and repeated; the table reports
medians and the ratio to the default. Flags
that did not help stay in the table: that is the record of what was tried.
"""

from __future__ import annotations

import statistics

from research.bench.timing import machine, table
from research.bench.train import SPECS, measure

# (what, environment, options of train.measure: config.fast_paths, compute_dtype). Each measurement's process applies
# the XLA flags of research/xla_flags.py's profile (training steps: their spec's `xla_profile`; the forward pass: `default`;
# see train.measure) unless the experiment sets the same flag, and research/host_memory.py's malloc settings (unless
# RESEARCH_MALLOC_DEFAULTS=0).
YNN = "--xla_cpu_experimental_ynn_fusion_type="
EXPERIMENTS = [
    ("default: the library's XLA flags, malloc settings and fast paths", {}, {}),
    ("malloc as glibc sets it (`RESEARCH_MALLOC_DEFAULTS=0`): a fresh mmap per step", {"RESEARCH_MALLOC_DEFAULTS": "0"},
     {}),
    ("jaxlib's XLA defaults", {"RESEARCH_XLA_DEFAULTS": "off"}, {}),
    ("XLA profile `default` (reductions with XLA)", {"RESEARCH_XLA_DEFAULTS": "default"}, {}),
    ("XLA profile `fused_reductions` (reductions fused by YNNPACK)", {"RESEARCH_XLA_DEFAULTS": "fused_reductions"},
     {}),
    ("convolutions by YNNPACK", {"XLA_FLAGS": YNN + "-reduce"}, {}),
    ("`config.fast_paths=False` (reference max-pool, BatchNorm backward and attention)", {}, {"fast_paths": False}),
    ("`config.compute_dtype=bfloat16` (CPU recipe: Linear products from bfloat16 operands)", {},
     {"compute_dtype": "bfloat16"}),
    ("convolutions by XNNPACK", {"XLA_FLAGS": "--xla_cpu_experimental_xnn_fusion_type=+individual_convolution"}, {}),
    ("oneDNN fusions (dot, eltwise, reduce)",
     {"XLA_FLAGS": "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce"}, {}),
    ("oneDNN (`--xla_cpu_use_onednn=true`)", {"XLA_FLAGS": "--xla_cpu_use_onednn=true"}, {}),
    ("fast math", {"XLA_FLAGS": "--xla_cpu_enable_fast_math=true"}, {}),
]
# (column, research.bench.train system, model): training steps of the CNN and Transformer, and the Transformer's
# inference (forward) pass, where the reduce fusions mattered.
FORWARD_PER_STEP = 5  # forward batches timed per training step: a forward pass is ~3x cheaper
COLUMNS = [("cnn train", "hand_jax", "cnn"), ("transformer train", "hand_jax", "transformer"),
           ("transformer forward", "forward_jax", "transformer")]


def run(quick: bool = False) -> str:
  steps, repeats = (4, 1) if quick else (40, 2)
  experiments = EXPERIMENTS[:2] if quick else EXPERIMENTS
  # --quick leaves out the Transformer's training column: the train section's quick run measures that step.
  columns = [c for c in COLUMNS if not quick or c[0] != "transformer train"]
  rates: dict[tuple[int, int], list[float]] = {}
  errors: dict[tuple[int, int], str] = {}
  for _ in range(repeats):
    for c, (_, system, model) in enumerate(columns):
      for i, (_, env, options) in enumerate(experiments):  # interleaved: machine noise hits every row alike
        batches = steps * (FORWARD_PER_STEP if system == "forward_jax" else 1)
        result = measure(system, model, batches, env=env, **options)
        if "examples_per_sec" in result:
          rates.setdefault((c, i), []).append(result["examples_per_sec"])
        else:
          errors[(c, i)] = result["error"]
  rows = []
  for i, (what, env, _) in enumerate(experiments):
    row = [what, " ".join(f"`{k}={v}`" for k, v in env.items())]
    for c in range(len(columns)):
      if (c, i) not in rates or (c, 0) not in rates:
        row += [errors.get((c, i), "failed"), ""]
        continue
      rate, base = statistics.median(rates[(c, i)]), statistics.median(rates[(c, 0)])
      row += [f"{rate:,.0f}", f"{rate / base:.2f}x"]
    rows.append(row)
  header = ["experiment", "environment"]
  for column, _, _ in columns:
    header += [f"{column} ex/s", "vs default"]
  shapes = "; ".join(f"{m}: batch {SPECS[m]['batch']}" for m in ("cnn", "transformer"))
  return (f"The library's models in a hand-written jax.jit training loop and forward pass ({shapes}), examples/s, "
          f"median of {repeats} interleaved runs of {steps} training steps (forward: {FORWARD_PER_STEP * steps} "
          f"batches), each in its own process.\nMachine: {machine()}.\n\n" + table(header, rows))
