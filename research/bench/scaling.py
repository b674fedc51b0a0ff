"""Scaling over devices: the library's GPT train step on 1, 2, 4 and 8 devices for each layout, and the compiled
memory of GPTs of 124M, 350M and 1.3B parameters on 8 devices.

Each device count runs in its own process with that many simulated CPU devices
(`--xla_force_host_platform_device_count`). The simulated devices share the machine's
cores, so step times do not scale as real chips would: the figures that carry over to
real hardware are the bytes each device sends through collectives per step (summed over
the all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute operands of
the compiled program) and the compiled memory. The large GPTs are compiled only, from
abstract shapes: no parameter is ever allocated.

`LAYOUTS` maps a layout to the `config.mesh` that puts every device on its axis.
"""

from __future__ import annotations

import re

import numpy as np

from research.bench import train as train_bench
from research.bench.timing import machine, table

LAYOUTS = {"data": {"data": -1}}  # the fsdp and tensor axes join here with their sharding rules
DEVICES = (1, 2, 4, 8)
GPT = {"name": "gpt", "mlp_ratio": 4, "dropout": 0.0, "tie_embeddings": True, "sample_prompt_length": 8,
       "sample_tokens": 0, "sample_temperature": 1.0, "sample_top_k": 0}
# The timed GPT (a global batch of 32 windows, strong scaling) and GPT-2's sizes for the memory table.
TIMED = {"vocab_size": 8192, "block_size": 128, "num_layers": 4, "num_heads": 4, "embed_dim": 256, "batch": 32}
QUICK = {"vocab_size": 256, "block_size": 32, "num_layers": 2, "num_heads": 2, "embed_dim": 64, "batch": 8}
SIZES = {"124M": {"num_layers": 12, "num_heads": 12, "embed_dim": 768},
         "350M": {"num_layers": 24, "num_heads": 16, "embed_dim": 1024},
         "1.3B": {"num_layers": 24, "num_heads": 32, "embed_dim": 2048}}
GPT2 = {"vocab_size": 50304, "block_size": 1024, "batch": 8}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.+?) ([\w-]+)\((.*?)\)", re.MULTILINE)
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128)\[([\d,]*)\]")
_BYTES = {"pred": 1, "bf16": 2, "c64": 8, "c128": 16}


def _shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape such as `f32[4,4]{1,0}` or a tuple of them."""
  return sum((_BYTES.get(dtype) or int(dtype[1:]) // 8) * int(np.prod([int(d) for d in dims.split(",") if d]))
             for dtype, dims in _SHAPE.findall(shape))


def collective_bytes(hlo_text: str) -> dict[str, int]:
  """Bytes of the operands of each kind of collective in a compiled program's HLO text (one device's program;
  an asynchronous collective counts at its `-start`). A collective inside a loop body is counted once."""
  instructions = _INSTRUCTION.findall(hlo_text)
  shapes = {name: shape for name, shape, _, _ in instructions}
  totals = dict.fromkeys(COLLECTIVES, 0)
  for _, _, op, operands in instructions:
    kind = op.removesuffix("-start")
    if kind in totals:
      totals[kind] += sum(_shape_bytes(shapes.get(o.strip().lstrip("%"), "")) for o in operands.split(","))
  return totals


def _config(layout: str, model: dict, compute_dtype: str = "float32"):
  from research import config as config_lib

  config = config_lib.defaults()
  config.model = {**GPT, **{k: v for k, v in model.items() if k != "batch"}}
  config.data.input_key = "tokens"
  config.mesh = {**LAYOUTS[layout]}
  config.compute_dtype = compute_dtype
  config.optimizer.update(name="adamw", learning_rate=3e-4, weight_decay=0.1)
  config.schedule.update(name="constant", warmup_steps=0)
  return config


def measure(layout: str, quick: bool) -> dict:
  """In a process with the devices to measure: step ms, examples/s, collective bytes and compiled memory."""
  import time

  import jax

  from research import parallel
  from research.train import experiment
  from research.train.step import make_steps

  spec = QUICK if quick else TIMED
  config = _config(layout, spec)
  mesh = parallel.make_mesh(config)
  tokens = np.random.default_rng(0).integers(0, spec["vocab_size"], (spec["batch"], spec["block_size"] + 1))
  batch = {"tokens": tokens.astype(np.int32)}
  model = experiment.build_model(config, batch, lambda b: b)
  graphdef, state, tx, _ = experiment.build_state(config, model, 10, mesh)
  train_step, _ = make_steps(graphdef, tx, mesh, strategy="auto", input_key="tokens")
  batch = jax.device_put(batch, parallel.batch_sharding(mesh))
  compiled = train_step = train_step.lower(state, batch).compile()  # (calling the jitted one would compile again)
  steps = 2 if quick else 10
  for _ in range(2):
    state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)  # (the CPU backend's deadlock guard: DESIGN.md)
  step_time = (time.perf_counter() - start) / steps
  return {"step_ms": step_time * 1e3, "examples_per_sec": spec["batch"] / step_time,
          "collective_bytes": sum(collective_bytes(compiled.as_text()).values()),
          "temp_bytes": compiled.memory_analysis().temp_size_in_bytes}


def compiled_memory(layout: str, size: str, quick: bool) -> dict:
  """Per-device bytes of the compiled bfloat16 train step of a GPT of `size` (GPT-2's vocabulary and context, a
  global batch of 8), compiled from abstract shapes: nothing is allocated or run."""
  import jax
  from flax import nnx

  from research import optim, parallel
  from research.models import precision
  from research.registry import MODELS
  from research.train import state as state_lib
  from research.train.step import make_steps

  spec = QUICK if quick else {**GPT2, **SIZES[size]}
  config = _config(layout, spec, "bfloat16")
  mesh = parallel.make_mesh(config)
  tx, _ = optim.build(config, 10)
  sample = np.zeros((2, spec["block_size"]), np.int32)
  build = lambda: precision.set_compute_dtype(MODELS.get("gpt")(config.model, sample, nnx.Rngs(0)), "bfloat16")
  graphdef = nnx.split(nnx.eval_shape(build), nnx.Param, ...)[0]
  shapes = jax.eval_shape(lambda: state_lib.create(build(), tx, 0)[1])
  state = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=parallel.replicated(mesh)), shapes)
  batch = {"tokens": jax.ShapeDtypeStruct((spec["batch"], spec["block_size"] + 1), np.int32,
                                          sharding=parallel.batch_sharding(mesh))}
  train_step, _ = make_steps(graphdef, tx, mesh, strategy="auto", input_key="tokens")
  memory = train_step.lower(state, batch).compile().memory_analysis()
  return {"params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes.params)),
          "argument_bytes": memory.argument_size_in_bytes, "temp_bytes": memory.temp_size_in_bytes}


def _in_process(function: str, devices: int, *args) -> dict:
  """`function(*args)` of this module in a fresh Python with `devices` simulated CPU devices."""
  code = (f"import json; from research.bench import scaling; "
          f"print(json.dumps(scaling.{function}(*{list(args)!r})))")
  env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
         **train_bench.training_profile("transformer")}
  result = train_bench.run_python(code, env)
  if "error" in result:
    raise RuntimeError(f"scaling {function}{tuple(args)} on {devices} devices: {result['error']}")
  return result


def run(quick: bool = False) -> str:
  devices = (1, 2) if quick else DEVICES
  rows = []
  for layout in LAYOUTS:
    for n in devices:
      r = _in_process("measure", n, layout, quick)
      rows.append([layout, n, f"{r['step_ms']:.1f}", f"{r['examples_per_sec']:,.1f}",
                   f"{r['collective_bytes'] / 1e6:,.2f}", f"{r['temp_bytes'] / 1e6:,.1f}"])
  memory_rows = []
  for layout in LAYOUTS:
    for size in (("tiny",) if quick else SIZES):
      r = _in_process("compiled_memory", 8, layout, size, quick)
      memory_rows.append([layout, size, f"{r['params'] / 1e6:,.2f}M", f"{r['argument_bytes'] / 2**20:,.1f}",
                          f"{r['temp_bytes'] / 2**20:,.1f}", f"{(r['argument_bytes'] + r['temp_bytes']) / 2**20:,.1f}"])
  spec = QUICK if quick else TIMED
  return (f"The library's GPT train step (AdamW, float32) at a fixed global batch of {spec['batch']} windows of "
          f"{spec['block_size']} tokens ({spec['num_layers']} layers, width {spec['embed_dim']}, vocabulary "
          f"{spec['vocab_size']}) on simulated CPU devices in one process per count. The devices share the "
          f"machine's cores: the collective bytes and the memory carry over to real chips, the times do not.\n"
          f"Machine: {machine()}.\n\n"
          + table(["layout", "devices", "step ms", "examples/s", "collective MB per device per step",
                   "compiled temp MB per device"], rows)
          + "\n\nCompiled memory per device on 8 devices, MiB: the bfloat16 train step (AdamW, float32 parameters "
          f"and moments) of GPTs with a vocabulary of {GPT2['vocab_size']:,}, {GPT2['block_size']:,} tokens of "
          f"context and a global batch of {GPT2['batch']} windows{' (--quick: a tiny GPT)' if quick else ''}, "
          "compiled from abstract shapes. Arguments: the train state and the batch (the state is donated, so the "
          "new state reuses them); temporaries: activations, gradients and the optimizer's work.\n\n"
          + table(["layout", "GPT", "parameters", "arguments MiB", "temporaries MiB", "total MiB"], memory_rows))
