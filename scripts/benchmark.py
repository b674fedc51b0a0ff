#!/usr/bin/env python
"""Benchmarks; each section prints a markdown table and writes it to docs/benchmarks/<section>.md.

    python scripts/benchmark.py checkpoint [--quick]   # save/restore cost (issue: checkpoints)
    python scripts/benchmark.py train [--quick]        # trainer vs hand-written jax.jit, Keras 3, PyTorch
    python scripts/benchmark.py train_bf16 [--quick]   # the same, every system in bfloat16 mixed precision
    python scripts/benchmark.py steps [--quick]        # the trainer's compiled step vs the hand-written one, in-process
    python scripts/benchmark.py inference [--quick]    # JAX vs onnxruntime (float, int8), SavedModel, TFLite
    python scripts/benchmark.py cpu [--quick]          # XLA:CPU flags and fast formulations (the CPU investigation)
    python scripts/benchmark.py pipeline [--quick]     # data wait, input supply vs consumption, compile time per zoo config
    python scripts/benchmark.py accelerator [--quick]  # GPT and ResNet in bfloat16 on a GPU/TPU: throughput and MFU
    python scripts/benchmark.py scaling [--quick]      # 1-8 devices per layout: step time, collective bytes, memory
    python scripts/benchmark.py serving [--quick]      # the HTTP server vs in-process onnxruntime and peer servers
    python scripts/benchmark.py hooks [--quick]        # the optional TensorBoard hooks' cost against the train step
"""

import argparse
import contextlib
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # Run from a checkout without installing.

# section: (module, keyword arguments of its run())
SECTIONS = {"checkpoint": ("research.bench.checkpoint", {}), "train": ("research.bench.train", {}),
            "train_bf16": ("research.bench.train", {"compute_dtype": "bfloat16"}),
            "steps": ("research.bench.steps", {}),
            "inference": ("research.bench.inference", {}), "pipeline": ("research.bench.pipeline", {}),
            "cpu": ("research.bench.cpu", {}), "accelerator": ("research.bench.accelerator", {}),
            "serving": ("research.bench.serving", {}), "scaling": ("research.bench.scaling", {}),
            "hooks": ("research.bench.hooks", {})}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("section", choices=sorted(SECTIONS), help="which benchmark to run (see the list above)")
  parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the benchmark runs, not the numbers")
  parser.add_argument("--out", default=None, help="markdown file (default docs/benchmarks/<section>.md; "
                                                  "--quick writes nothing unless --out is given)")
  parser.add_argument("--verbose", action="store_true", help="print other libraries' warnings and logs on the console "
                                                              "(by default they go to research-<uid>-warnings.log in "
                                                              "the temp dir, as the other scripts' do)")
  args = parser.parse_args()
  from research import console, host_memory, xla_flags

  xla_flags.apply()  # the library's process settings, before a section starts JAX (as scripts/train.py does)
  host_memory.apply()
  module, options = SECTIONS[args.section]
  with contextlib.nullcontext() if args.verbose else console.quiet(console.temp_log_path()):
    report = importlib.import_module(module).run(quick=args.quick, **options)
  command = f"python scripts/benchmark.py {args.section}{' --quick' if args.quick else ''}"
  text = f"# Benchmark: {args.section}\n\nCommand: `{command}`\n\n{report}\n"
  print(text)
  out = args.out or (None if args.quick else ROOT / "docs" / "benchmarks" / f"{args.section}.md")
  if out:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
