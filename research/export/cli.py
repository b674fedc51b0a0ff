"""`scripts/export.py`: parse flags, call research.export, report errors in one line.

Exit codes: 0 done; 1 an artifact failed its parity check, or --verify found a
changed, missing or unlisted file; 2 bad arguments (unknown format, missing
workdir or checkpoint, a combination that cannot work), reported before any work.
Other libraries' warnings go to WORKDIR/logs/warnings.log unless --verbose
(research/console.py); `main` applies the process settings first
(research.cli.entry_point).
"""

from __future__ import annotations

import argparse
import math
import sys

from research import console
from research.cli import Parser, entry_point, parse_step as _step
from research.errors import CheckpointError, ConfigError, DataUnavailableError


def _batch_sizes(text: str) -> list[int]:
  try:
    sizes = [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    sizes = []
  if len(sizes) < 1 or min(sizes) < 1:
    raise ConfigError(f"--parity-batch-sizes takes positive integers like 1,64, not {text!r}.")
  return sizes


def parser() -> argparse.ArgumentParser:
  from research.export.formats import FORMATS
  from research.export.parity import DEFAULT_BATCH_SIZES, DEFAULT_MAX_ACCURACY_DROP, DEFAULT_TOLERANCE

  p = Parser(prog="export.py", description="Export a trained run for deployment: each artifact checked against JAX\n"
             "on real test inputs, described with sha256s in manifest.json. Or verify an export directory.",
             formatter_class=argparse.RawDescriptionHelpFormatter,
             epilog="  python scripts/export.py --workdir runs/mnist_mlp --format onnx,tflite  # -> runs/mnist_mlp/export/"
             "\n  python scripts/export.py --verify runs/mnist_mlp/export")
  p.add_argument("--workdir", help="the training run's workdir")
  p.add_argument("--step", default="latest",
                 help="checkpoint: latest (default), best (marked by the config's checkpoint.best_metric), "
                 "or a step number")
  p.add_argument("--format", default="onnx", help=f"comma-separated, from: {', '.join(FORMATS.names())} (default onnx)")
  p.add_argument("--out", help="export directory (default WORKDIR/export); an older export there is replaced")
  p.add_argument("--parity-batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)),
                 help="batch sizes of real test inputs to check each artifact at (default %(default)s)")
  p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                 help="max abs difference from JAX allowed on the outputs (default %(default)g)")
  p.add_argument("--max-accuracy-drop", type=float, default=DEFAULT_MAX_ACCURACY_DROP,
                 help="quantized formats: the most test accuracy (a fraction) they may lose against their float "
                 "base (default %(default)g)")
  p.add_argument("--accuracy-examples", type=int, help="test examples to measure accuracy on (default: all)")
  p.add_argument("--tflite-batch", type=int, help="fix the batch size of tflite and tflite_int8 (default: dynamic)")
  p.add_argument("--verify", metavar="DIR", help="recompute every sha256 in DIR/manifest.json, export nothing")
  p.add_argument("--verbose", action="store_true", help=console.VERBOSE_HELP)
  return p


def run(argv: list[str]) -> int:
  args = parser().parse_args(argv)  # (before importing JAX: --help is quick)
  from research.export import api

  if args.verify:
    if args.workdir:
      raise ConfigError("--verify checks an existing export; give it without --workdir.")
    from research.export.manifest import VerifyError

    try:
      manifest = api.verify(args.verify)
    except VerifyError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    except ConfigError as e:  # not an export directory
      raise ConfigError(f"--verify {args.verify}: {e}") from None
    print(f"ok: {len(manifest['files'])} files in {args.verify} match manifest.json")
    return 0
  if not args.workdir:
    raise ConfigError("Give --workdir of a training run to export, or --verify DIR to check an export.")
  from research.export.parity import ParityError

  options = {}
  if args.tflite_batch is not None:
    if args.tflite_batch < 1:
      raise ConfigError(f"--tflite-batch must be a positive batch size, not {args.tflite_batch}.")
    names = [f.name for f in api.parse_formats(args.format)]
    if "tflite" not in names:
      raise ConfigError("--tflite-batch fixes the batch of the TFLite model: add tflite to --format.")
    options.update({n: {"batch": args.tflite_batch} for n in ("tflite", "tflite_int8") if n in names})
  if args.accuracy_examples is not None and args.accuracy_examples < 1:
    raise ConfigError(f"--accuracy-examples must be positive, not {args.accuracy_examples}.")
  if not 0 <= args.tolerance < math.inf:  # (nan fails too)
    raise ConfigError(f"--tolerance is the largest difference from JAX allowed: a finite number >= 0, not "
                      f"{args.tolerance}.")
  if not 0 <= args.max_accuracy_drop <= 1:
    raise ConfigError(f"--max-accuracy-drop is a fraction of test accuracy, in [0, 1], not {args.max_accuracy_drop}.")
  try:
    api.export(args.workdir, step=_step(args.step), formats=args.format, out=args.out,
               batch_sizes=_batch_sizes(args.parity_batch_sizes), tolerance=args.tolerance,
               max_accuracy_drop=args.max_accuracy_drop, accuracy_examples=args.accuracy_examples, options=options)
  except ParityError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def main(argv: list[str]) -> int:
  try:
    with entry_point(argv, console.flag_value(argv, "--workdir")):
      return run(argv)
  except (ConfigError, DataUnavailableError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("error: interrupted; the export directory may be incomplete.", file=sys.stderr)
    return 130
