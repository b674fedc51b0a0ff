"""`scripts/sweep.py` (run a sweep of a config) and `scripts/runs.py` (compare runs): flags and error handling.

Exit codes: 0 done; 1 a run failed or stopped before its end; 2 bad arguments (one line naming them);
130 interrupted (rerun the same sweep command to resume).
"""

from __future__ import annotations

import sys
from pathlib import Path

from research import config as config_lib
from research.cli import entry_point, script_parser, stdout_closed
from research.errors import ConfigError


def sweep_parser():
  p = script_parser(
      "sweep.py", "Train a config many times with different values, each run in its own workdir under --out.\n"
      "Rerun the same command to resume: finished runs are skipped, stopped ones continue.",
      "  python scripts/sweep.py --config configs/mnist_mlp.py --out runs/sweep \\\n"
      "      --grid 'optimizer.learning_rate=1e-3,3e-3' --grid 'model.hidden_sizes=(512,256),(256,)'\n"
      "  python scripts/sweep.py --config configs/mnist_mlp.py --out runs/random --random 8 --seed 0 \\\n"
      "      --sample 'optimizer.learning_rate=loguniform(1e-4,1e-2)' --parallel 2\n\n"
      "Distributions for --sample: uniform(a,b), loguniform(a,b), randint(a,b), choice(v1,v2,...).\n"
      "Overrides for every run: --config.KEY=VALUE, as with train.py. Compare the runs with scripts/runs.py OUT\n"
      "or in TensorBoard's HParams tab (tensorboard --logdir OUT). docs/sweeps.md explains it all.",
      usage="%(prog)s --config configs/<name>.py[:variant] --out DIR (--grid KEY=V1,V2 ... | --random N --sample "
      "KEY=DIST ...) [--config.KEY=VALUE ...] [options]")
  p.add_argument("--config", required=True, metavar="FILE[:VARIANT]", help="the experiment, as for train.py")
  p.add_argument("--out", required=True, metavar="DIR", help="the sweep's directory: sweep.json and one workdir "
                 "per run")
  p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                 help="a config key and its values; several --grid flags run every combination")
  p.add_argument("--random", type=int, default=0, metavar="N", help="draw N values of each --sample")
  p.add_argument("--sample", action="append", default=[], metavar="KEY=DIST",
                 help="a config key and the distribution its values are drawn from (with --random)")
  p.add_argument("--seed", type=int, default=0, metavar="S", help="the seed of the --random draws (default 0)")
  p.add_argument("--parallel", type=int, default=1, metavar="N",
                 help="runs at once, each on its share of the CPUs (default 1: one after another)")
  p.add_argument("--dry_run", action="store_true", help="print the runs and their overrides, start nothing")
  return p


def sweep(argv: list[str]) -> int:
  from research.sweep import execute, plan

  args, rest = sweep_parser().parse_known_args(argv)
  fixed = [a for a in rest if a.startswith(config_lib.OVERRIDE_PREFIX)]
  unknown = [a for a in rest if a not in fixed]
  if unknown:
    raise ConfigError(f"Unrecognized arguments {' '.join(unknown)}; config overrides look like --config.key=value.")
  if args.parallel < 1:
    raise ConfigError(f"--parallel must be >= 1, got {args.parallel}.")
  if args.random < 0:
    raise ConfigError(f"--random must be >= 0, got {args.random}.")
  runs = plan.make(args.grid, args.sample, args.random, args.seed)
  swept = {o.partition("=")[0] for o in runs[0].overrides}
  both = sorted(swept & {o.partition("=")[0] for o in fixed})
  if both:
    raise ConfigError(f"{', '.join(k[2:] for k in both)} is both swept and fixed; drop the --config override.")
  plan.check(args.config, fixed, runs)
  if args.dry_run:
    for run in runs:
      print(f"{run.name}\t{' '.join(run.overrides)}")
    return 0
  out = Path(args.out)
  execute.write_plan(out, {"config": args.config, "overrides": fixed, "grid": args.grid, "random": args.random,
                           "sample": args.sample, "seed": args.seed,
                           "runs": [{"name": r.name, "overrides": list(r.overrides)} for r in runs]})
  return execute.Sweep(out, args.config, fixed, runs, args.parallel).run()


def runs_parser():
  p = script_parser(
      "runs.py", "Compare training runs: a table of the config values that differ, final and best metrics and wall "
      "time;\noptionally the curves of chosen metrics as a PNG.",
      "  python scripts/runs.py runs/sweep --sort best/eval/accuracy\n"
      "  python scripts/runs.py runs/sweep --format csv > runs.csv\n"
      "  python scripts/runs.py runs/sweep --plot eval/accuracy,train/loss --out runs/sweep/curves.png")
  p.add_argument("directory", metavar="DIR", help="a sweep's directory (or any folder of workdirs, or one workdir)")
  p.add_argument("--metrics", default="", metavar="TAG,TAG",
                 help="the metrics to show (default: every eval metric and train/loss)")
  p.add_argument("--sort", default="", metavar="COLUMN",
                 help="sort by a column: metrics best first (accuracy down, loss up), other columns ascending")
  p.add_argument("--reverse", action="store_true", help="reverse the --sort order")
  p.add_argument("--format", default="markdown", choices=["markdown", "csv"], help="the table's format")
  p.add_argument("--plot", default="", metavar="TAG,TAG", help="also draw these metrics' curves to --out")
  p.add_argument("--out", default="", metavar="PNG", help="where --plot writes (default DIR/curves.png)")
  p.add_argument("--hparams", action="store_true",
                 help="also register every run for TensorBoard's HParams tab (runs trained before it existed)")
  return p


def _tags(text: str) -> list[str]:
  return [t.strip() for t in text.split(",") if t.strip()]


def compare(argv: list[str]) -> int:
  from research import hparams
  from research import runs as runs_lib
  from research.sweep import plot, table

  args = runs_parser().parse_args(argv)
  found = [runs_lib.read(workdir) for workdir in runs_lib.find(args.directory)]
  metrics = _tags(args.metrics)
  logged = {tag for run in found for tag in run.curves}
  missing = [t for t in metrics if t not in logged]
  if missing:
    raise ConfigError(f"--metrics {','.join(missing)}: no run logged it; logged metrics: {', '.join(sorted(logged))}.")
  print(table.render(found, metrics, args.sort, args.reverse, args.format))
  if args.hparams:
    for run in found:
      hparams.record_run(run.workdir)
  if args.plot:
    written = plot.plot(found, _tags(args.plot), args.out or Path(args.directory) / "curves.png")
    print(f"wrote {written}", file=sys.stderr)
  return 0


def main(command: str, argv: list[str]) -> int:
  try:
    with entry_point(argv, None):
      return sweep(argv) if command == "sweep" else compare(argv)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except BrokenPipeError:  # `runs.py DIR | head`
    return stdout_closed()
  except KeyboardInterrupt:
    return 130
