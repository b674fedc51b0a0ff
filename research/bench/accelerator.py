"""Accelerator throughput: the library's own train step for a GPT and a ResNet in bfloat16, with MFU.

Each model is built from a config the way `scripts/train.py` builds it
(research.train.experiment, mixed precision by `compute_dtype="bfloat16"`,
AdamW, the NaN guard and gradient norm of the real step) and trained on
synthetic data already on the device, so the numbers are the step's alone.
The table reports tokens/s or images/s and two MFU figures against the chip's
dense bf16 peak:
  - model FLOPs: the GPT's 6N + 12 L T d per token (PaLM's appendix B: the
    matmuls of forward and backward, attention included; N without the
    embedding tables); for the ResNet, XLA's own count;
  - XLA FLOPs: what XLA's cost analysis counts for the compiled step (optimizer
    and elementwise work included, recomputation too).
Both are per step over all devices, against the peak of all devices.
On a device whose peak is not in research/train/throughput.py's `PEAKS` (a CPU, for `--quick`) MFU is n/a.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from research.bench.timing import machine, table

# GPT-2 small's shape (124M parameters with its 50,257-token vocabulary padded to 50,304), ResNet-18 on
# 224 x 224 images. --quick: tiny versions that run on a CPU in seconds.
SPECS = {
    "gpt": dict(batch=32, model=dict(name="gpt", vocab_size=50304, block_size=1024, num_layers=12, num_heads=12,
                                     embed_dim=768, mlp_ratio=4, dropout=0.0, tie_embeddings=True,
                                     sample_prompt_length=8, sample_tokens=0, sample_temperature=1.0, sample_top_k=0),
                quick=dict(batch=8, block_size=64, num_layers=2, num_heads=2, embed_dim=64, vocab_size=256)),
    "resnet": dict(batch=256, image=224, model=dict(name="resnet", depth=18, width=64, num_classes=1000,
                                                      dropout=0.0, bn_momentum=0.9),
                   quick=dict(batch=8, image=32, depth=8, width=8, num_classes=10)),
}


def _config_and_batch(name: str, quick: bool):
  from research import config as config_lib

  spec = SPECS[name]
  model = dict(spec["model"])
  batch_size, image = spec["batch"], spec.get("image")
  if quick:
    batch_size, image = spec["quick"]["batch"], spec["quick"].get("image", image)
    model.update({k: v for k, v in spec["quick"].items() if k in model})
  config = config_lib.defaults()
  config.model = model
  config.compute_dtype = "bfloat16"
  config.optimizer.update(name="adamw", learning_rate=3e-4, weight_decay=0.1, clip_norm=1.0)
  config.schedule.update(name="constant", warmup_steps=0)
  rng = np.random.default_rng(0)
  if name == "gpt":
    config.data.input_key = "tokens"
    batch = {"tokens": rng.integers(0, model["vocab_size"], (batch_size, model["block_size"] + 1), np.int32)}
  else:
    batch = {"image": rng.standard_normal((batch_size, image, image, 3), np.float32),
             "label": rng.integers(0, model["num_classes"], batch_size).astype(np.int32)}
  return config, batch


def measure(name: str, quick: bool = False) -> dict:
  """Trains `name` for a few steps on one batch; returns rates, FLOPs per step and the parameter count."""
  from research import parallel
  from research.train import experiment, throughput
  from research.train.step import make_steps

  config, batch = _config_and_batch(name, quick)
  mesh = parallel.make_mesh(config)
  model = experiment.model_factory(config, batch, lambda b: b, config.compute_dtype)
  graphdef, state, tx, _ = experiment.build_state(config, model, 10_000, mesh)
  train_step, _ = make_steps(graphdef, tx, mesh, strategy="auto", input_key=config.data.input_key)
  batch = jax.device_put(batch, parallel.batch_sharding(mesh))
  # Run what was measured: calling the jitted function after compiling it this way would compile it again.
  train_step = train_step.lower(state, batch).compile()
  xla_flops = throughput.step_flops(train_step, mesh.size)
  params = sum(x.size for x in jax.tree.leaves(state.params))
  steps = 3 if quick else 30
  for _ in range(3):  # warm-up
    state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for i in range(steps):
    state, metrics = train_step(state, batch)
    if i % 16 == 15:  # the CPU backend's deadlock guard (DESIGN.md); free elsewhere
      jax.block_until_ready(metrics)
  jax.block_until_ready(metrics)
  step_time = (time.perf_counter() - start) / steps
  m = config.model
  if name == "gpt":
    items = batch["tokens"].shape[0] * m.block_size  # tokens: targets per step
    embedding = m.vocab_size * m.embed_dim + m.block_size * m.embed_dim
    model_flops = items * (6 * (params - embedding) + 12 * m.num_layers * m.block_size * m.embed_dim)
  else:
    items = batch["image"].shape[0]
    model_flops = xla_flops
  return dict(items_per_sec=items / step_time, step_ms=step_time * 1e3, model_flops=model_flops,
              xla_flops=xla_flops, devices=mesh.size, params=params, loss=float(np.asarray(metrics)[0]))


def run(quick: bool = False) -> str:
  from research.train.throughput import peak_flops

  peak = peak_flops(jax.devices()[0], "bfloat16")
  if peak is None and not quick:
    return (f"Skipped: no accelerator with a known bfloat16 peak here ({jax.devices()[0].device_kind}). Run it on a "
            f"GPU or TPU (research/train/throughput.py lists the known ones), or add --quick for tiny models.")
  rows = []
  for name, unit in (("gpt", "tokens/s"), ("resnet", "images/s")):
    r = measure(name, quick)
    mfu = lambda flops: "n/a" if peak is None else f"{flops / (r['step_ms'] / 1e3) / (peak * r['devices']):.1%}"
    rows.append([name, f"{r['params'] / 1e6:.1f}M", f"{r['items_per_sec']:,.0f} {unit}", f"{r['step_ms']:.1f}",
                 mfu(r["model_flops"]), mfu(r["xla_flops"]), f"{r['xla_flops'] / r['model_flops']:.2f}",
                 f"{r['loss']:.3f}"])
  shapes = ("GPT: " + ("tiny (--quick)" if quick else "GPT-2 small shape, 12 layers, d 768, 12 heads, 1,024 tokens, "
                        f"batch {SPECS['gpt']['batch']}")
            + "; ResNet: " + ("tiny (--quick)" if quick else f"ResNet-18, 224 x 224, batch {SPECS['resnet']['batch']}"))
  return (f"The library's train step (AdamW, gradient clipping, NaN guard) in mixed precision (bfloat16 compute, "
          f"float32 parameters) on synthetic data on the device; {shapes}. Peak: "
          f"{'n/a' if peak is None else f'{peak / 1e12:.0f} TFLOP/s dense bf16'} "
          f"({jax.devices()[0].device_kind}).\nMachine: {machine()}.\n\n"
          + table(["model", "parameters", "throughput", "step ms", "MFU (model FLOPs)", "MFU (XLA FLOPs)",
                   "XLA / model FLOPs", "loss after the timed steps"], rows))
