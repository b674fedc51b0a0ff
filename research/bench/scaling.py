"""Scaling over devices: the library's GPT train step on 1, 2, 4 and 8 devices for each layout (data, fsdp,
tensor), and the compiled memory of GPTs of 124M, 350M and 1.3B parameters on 8 devices for each layout.

Each device count runs in its own process with that many simulated CPU devices
(`--xla_force_host_platform_device_count`). The simulated devices share the machine's
cores, so step times do not scale as real chips would: the figures that carry over to
real hardware are the bytes each device sends through collectives per step (summed over
the all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute operands of
the compiled program) and the compiled memory. The large GPTs are compiled only, from
abstract shapes, by research/train/compile_only.py: no parameter is ever allocated.

`LAYOUTS` maps a layout to the `config.mesh` that puts every device on its axis; the state and the step are
built as the trainer builds them (experiment.build_state, make_steps with the state's shardings).
"""

from __future__ import annotations

import re

import numpy as np

from research.bench import train as train_bench
from research.bench.timing import machine, table

# The state is placed by the trainer's rules (research/sharding.py): copied (data), split by FSDP, or split by
# heads and MLP units with the rest copied (tensor); batch rows are split over data x fsdp.
LAYOUTS = {"data": {"data": -1}, "fsdp": {"data": 1, "fsdp": -1}, "tensor": {"data": 1, "tensor": -1}}
DEVICES = (1, 2, 4, 8)
GPT = {"name": "gpt", "mlp_ratio": 4, "dropout": 0.0, "tie_embeddings": True, "sample_prompt_length": 8,
       "sample_tokens": 0, "sample_temperature": 1.0, "sample_top_k": 0}
# The timed GPT (a global batch of 32 windows, strong scaling) and GPT-2's sizes for the memory table.
TIMED = {"vocab_size": 8192, "block_size": 128, "num_layers": 4, "num_heads": 8, "embed_dim": 256, "batch": 32}
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
  config.data.update(input_key="tokens", batch_size=model["batch"])
  config.mesh.update(LAYOUTS[layout])
  config.compute_dtype = compute_dtype
  config.optimizer.update(name="adamw", learning_rate=3e-4, weight_decay=0.1)
  config.schedule.update(name="constant", warmup_steps=0)
  return config


def _windows(spec: dict, rows: int) -> dict[str, np.ndarray]:
  return {"tokens": np.random.default_rng(0).integers(0, spec["vocab_size"], (rows, spec["block_size"] + 1),
                                                      dtype=np.int32)}


def _measure(config, spec: dict, quick: bool) -> dict:
  """The trainer's step of `config`: its state built and placed by the rules as the loop does, compiled, timed."""
  import time

  import jax

  from research import parallel, sharding
  from research.data import augment
  from research.train import experiment
  from research.train.step import make_steps

  mesh = parallel.make_mesh(config)
  batch = _windows(spec, spec["batch"])
  model = experiment.model_factory(config, batch, lambda b: b, config.compute_dtype)
  graphdef, state, tx, _ = experiment.build_state(config, model, 10, mesh)
  train_step, _ = make_steps(graphdef, tx, mesh, strategy=config.parallel.strategy, input_key=config.data.input_key,
                             label_smoothing=config.label_smoothing, augment=augment.build(config.data.augment),
                             rollback=config.nan_policy == "skip", state_sharding=sharding.of(state))
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
  memory = compiled.memory_analysis()
  # The state's share of XLA's arguments, as --compile_only counts it (research/train/compile_only.py).
  batch_bytes = sum(x.addressable_shards[0].data.nbytes for x in batch.values())
  return {"step_ms": step_time * 1e3, "examples_per_sec": spec["batch"] / step_time,
          "collective_bytes": sum(collective_bytes(compiled.as_text()).values()),
          "state_bytes": memory.argument_size_in_bytes - batch_bytes, "temp_bytes": memory.temp_size_in_bytes}


def measure(quick: bool) -> dict[str, dict]:
  """In a process with the devices to measure: per layout, step ms, examples/s, collective bytes and compiled
  memory. Layouts whose meshes coincide (all of them on 1 device) are one program, measured once."""
  import jax

  from research import parallel

  spec = QUICK if quick else TIMED
  results, by_mesh = {}, {}
  for layout in LAYOUTS:
    config = _config(layout, spec)
    sizes = tuple(parallel.axis_sizes(config, jax.device_count()).values())
    if sizes not in by_mesh:
      by_mesh[sizes] = _measure(config, spec, quick)
    results[layout] = by_mesh[sizes]
  return results


def compiled_memory(size: str, quick: bool) -> dict[str, dict]:
  """Per layout: per-device bytes of the compiled bfloat16 train step of a GPT of `size` (GPT-2's vocabulary and
  context, a global batch of 8), compiled from abstract shapes as --compile_only does: nothing is allocated or
  run. (One process per size: a 1.3B compile takes 40-80 s of a busy 2-core machine, docs/sharding.md.)"""
  import dataclasses

  import jax

  from research.train import compile_only

  spec = QUICK if quick else {**GPT2, **SIZES[size]}
  results = {}
  for layout in LAYOUTS:
    report = compile_only.compile_step(_config(layout, spec, "bfloat16"), _windows(spec, 2), lambda b: b,
                                       jax.device_count())
    results[layout] = {**dataclasses.asdict(report), "device_state_bytes": report.device_state_bytes}
  return results


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
  devices = (2,) if quick else DEVICES
  measured = {n: _in_process("measure", n, quick) for n in devices}
  mb = lambda b: f"{b / 1e6:,.2f}"
  rows = [[layout, n, f"{r['step_ms']:.1f}", f"{r['examples_per_sec']:,.1f}", mb(r["collective_bytes"]),
           mb(r["state_bytes"]), mb(r["temp_bytes"])]
          for layout in LAYOUTS for n in devices for r in [measured[n][layout]]]
  memory = {size: _in_process("compiled_memory", 8, size, quick) for size in (("tiny",) if quick else SIZES)}
  mib = lambda b: f"{b / 2**20:,.1f}"
  memory_rows = [[layout, size, f"{r['parameters'] / 1e6:,.2f}M", mib(r["device_state_bytes"]),
                  mib(r["temp_bytes"]), mib(r["peak_bytes"])]
                 for layout in LAYOUTS for size in memory for r in [memory[size][layout]]]
  spec = QUICK if quick else TIMED
  layouts = "; ".join(f"`{layout}`: mesh {', '.join(f'{a}={s}' for a, s in mesh.items())}"
                      for layout, mesh in LAYOUTS.items())
  return (f"The library's GPT train step (AdamW, float32) at a fixed global batch of {spec['batch']} windows of "
          f"{spec['block_size']} tokens ({spec['num_layers']} layers, {spec['num_heads']} heads, width "
          f"{spec['embed_dim']}, vocabulary {spec['vocab_size']}) on simulated CPU devices in one process per "
          f"count, the state placed by the trainer's sharding rules (research/sharding.py) for each layout "
          f"({layouts}; -1: the devices the other axes leave). On 1 device the layouts are one program, measured "
          f"once. The devices share the machine's cores: the collective bytes and the memory carry over to real "
          f"chips, the times do not.\nMachine: {machine()}.\n\n"
          + table(["layout", "devices", "step ms", "examples/s", "collective MB per device per step",
                   "parameters + optimizer MB per device", "compiled temp MB per device"], rows)
          + "\n\nCompiled memory per device on 8 devices, MiB: the bfloat16 train step (AdamW, float32 parameters "
          f"and moments) of GPTs with a vocabulary of {GPT2['vocab_size']:,}, {GPT2['block_size']:,} tokens of "
          f"context and a global batch of {GPT2['batch']} windows{' (--quick: a tiny GPT)' if quick else ''}, "
          "compiled from abstract shapes by `scripts/train.py --compile_only`'s code with the same rules. "
          "Parameters + optimizer: each device's shards of them; temporaries: activations, gradients, gathered "
          "weights and the optimizer's work (XLA:CPU's, an estimate for other compilers); peak: arguments, "
          "outputs not written over the donated state, and temporaries.\n\n"
          + table(["layout", "GPT", "parameters", "parameters + optimizer MiB", "temporaries MiB", "peak MiB"],
                  memory_rows))
