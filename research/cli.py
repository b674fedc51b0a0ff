"""Command-line plumbing shared by scripts/: parse flags and overrides, report errors in one line.

`main` sets the process up before anything imports JAX: other libraries'
warnings go to a log file unless `--verbose` (research/console.py), then the
malloc settings (research/host_memory.py) and the default XLA flags
(research/xla_flags.py) are applied. `--help` imports no JAX, so it is quick.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Iterator

from research import accelerators, console, host_memory, xla_flags
from research.errors import (CheckpointError, ConfigError, DataUnavailableError, TrainingError, WorkdirWriteError,
                             exit_code)

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


class Parser(argparse.ArgumentParser):
  """argparse with errors as one-line ConfigErrors (argparse prints usage and the message on two lines)."""

  def error(self, message):
    raise ConfigError(f"{message} (see --help)")


def script_parser(prog: str, description: str, epilog: str, **kwargs) -> Parser:
  """A script's parser: descriptions and examples printed as written, no abbreviated flags, and --verbose."""
  p = Parser(prog=prog, description=description, epilog=epilog, allow_abbrev=False,
             formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
  p.add_argument("--verbose", action="store_true", help=console.VERBOSE_HELP)
  return p


def stdout_closed() -> int:
  """`script ... | head`: the reader left. Say nothing more (a later flush of stdout would complain) and exit 1."""
  os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
  return 1


def parse_step(text: str) -> str | int:
  """--step: 'latest', 'best' or a step number."""
  if text in ("latest", "best"):
    return text
  step = int(text) if text.strip().isdigit() else None  # steps count from 0: no sign, no float
  if step is None:
    raise ConfigError(f"--step must be latest, best or a checkpoint step number, not {text!r}.")
  return step


# --- train -------------------------------------------------------------------------------------------------


def _config_variants(tree: ast.Module) -> list[str]:
  """The variant names a config's get_config compares `arg` with (`arg == "smoke"`, `arg in ("a", "b")`)."""
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "arg":
      for op, other in zip(node.ops, node.comparators):
        values = other.elts if isinstance(op, ast.In) and isinstance(other, (ast.Tuple, ast.List, ast.Set)) else [other]
        if isinstance(op, (ast.Eq, ast.In)):
          found += [v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
  return list(dict.fromkeys(found))


def configs_help(directory: Path = CONFIGS_DIR) -> str:
  """One line per config file: name, variants, and the first line of its docstring (read, never run)."""
  lines = []
  for path in sorted(directory.glob("*.py")):
    if path.name.startswith("_"):
      continue
    try:
      tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, ValueError):
      continue
    summary = (ast.get_docstring(tree) or "").strip().splitlines()
    variants = _config_variants(tree)
    name = path.stem + "".join(f"[:{v}]" for v in variants)
    text = summary[0] if summary else ""
    lines.append(f"  {name:<30} {text}".rstrip() if len(name) < 30 else f"  {name}\n  {'':<30} {text}".rstrip())
  return "\n".join(lines) or "  (none found)"


def train_parser() -> Parser:
  epilog = f"""configs (configs/<name>.py, or configs/<name>.py:<variant>; smoke is a tiny run for checks):
{configs_help()}

config overrides:
  Any config field can be set from the command line with --config.KEY=VALUE, e.g.
    python scripts/train.py --config configs/mnist_mlp.py --workdir runs/mlp \\
        --config.optimizer.learning_rate=3e-4 --config.train.epochs=2 --config.model.hidden_sizes='(256,)'
  Every field and its default: research/config.py:defaults(); docs/configs.md explains each one.
  An unknown key or a value of the wrong type stops the run before any work, naming the nearest key.

The resolved config is written to WORKDIR/config.json. Rerunning the same command resumes from the latest
checkpoint in WORKDIR."""
  p = script_parser("train.py", "Train an experiment; rerun the same command to resume.", epilog,
                    usage="%(prog)s --config configs/<name>.py[:variant] --workdir DIR [--config.KEY=VALUE ...] "
                    "[options]")
  p.add_argument("--config", required=True, metavar="FILE[:VARIANT]",
                 help="the experiment: configs/<name>.py, optionally with a variant, e.g. configs/mnist_mlp.py:smoke")
  p.add_argument("--workdir", metavar="DIR",
                 help="directory for config.json, checkpoints/, metrics.jsonl, tensorboard/ and logs/; "
                 "created if missing")
  p.add_argument("--coordinator_address", default=None, metavar="HOST:PORT",
                 help="multi-process runs: host:port of process 0 (with --num_processes and --process_id), "
                 "or auto where JAX detects the cluster (SLURM, TPU VMs); docs/clusters.md")
  p.add_argument("--num_processes", type=int, default=None, metavar="N",
                 help="multi-process runs: how many processes take part")
  p.add_argument("--process_id", type=int, default=None, metavar="I",
                 help="multi-process runs: this process's index, 0 to N-1")
  p.add_argument("--init_timeout_s", type=int, default=300, metavar="S",
                 help="multi-process runs: how long to wait for every process to join (default 300)")
  p.add_argument("--heartbeat_timeout_s", type=int, default=100, metavar="S",
                 help="multi-process runs: a process silent this long is lost; the others exit 1 naming it "
                 "(default 100)")
  p.add_argument("--compile_only", action="store_true",
                 help="compile the train step for the config's mesh on simulated CPU devices and print memory and "
                 "FLOPs per device; trains nothing, allocates nothing, needs no --workdir (docs/sharding.md)")
  p.add_argument("--devices", type=int, default=None, metavar="N",
                 help="--compile_only: the target's device count (default: the product of the config's mesh axes)")
  p.add_argument("--accelerator", default=None, metavar="NAME",
                 help=f"--compile_only: exit 1 unless the run fits the memory of one such chip: "
                 f"{', '.join(accelerators.MEMORY_GIB)}")
  return p


def parse_train(argv: list[str]):
  """Returns (args, config) where config has every `--config.key=value` override applied."""
  args, rest = train_parser().parse_known_args(argv)
  if args.workdir is None and not args.compile_only:
    raise ConfigError("the following arguments are required: --workdir (see --help)")
  from research import config as config_lib

  overrides = [a for a in rest if a.startswith(config_lib.OVERRIDE_PREFIX)]
  unknown = [a for a in rest if a not in overrides]
  if unknown:
    raise ConfigError(f"Unrecognized arguments {' '.join(unknown)}; config overrides look like --config.key=value.")
  config = config_lib.load(args.config)
  config_lib.apply_overrides(config, overrides)
  return args, config


def train(argv: list[str]) -> None:
  from research.train.preemption import PreemptionGuard

  with PreemptionGuard() as preemption:  # before JAX is imported: a signal at any moment is a clean stop
    args, config = parse_train(argv)
    if args.compile_only:
      compile_only(config, args.devices, args.accelerator)
      return
    from research import distributed
    from research.train.loop import check, train as run

    check(config)
    xla_flags.apply(profile_name=config.xla_profile)  # before JAX starts its backend
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                           init_timeout_s=args.init_timeout_s, heartbeat_timeout_s=args.heartbeat_timeout_s)
    try:
      run(config, args.workdir, preemption)
    except BaseException as e:
      distributed.finish(e)  # with other processes: a failure stops them at once, not at a heartbeat timeout
      raise
    distributed.finish(None)
  if preemption.signal_name:  # stopped and saved: a signal during the exit (a second Ctrl-C) changes nothing now
    for sig in PreemptionGuard.SIGNALS:
      signal.signal(sig, signal.SIG_IGN)


def compile_only(config, devices: int | None, accelerator: str | None) -> None:
  """`train.py --compile_only`: JAX starts on as many simulated CPU devices as the target mesh has."""
  sizes = [config.mesh.get(axis, 1) for axis in ("data", "fsdp", "tensor")]
  if devices is None and -1 in sizes:
    raise ConfigError("--compile_only needs the target's device count: pass --devices N, or give every mesh axis "
                      "(mesh.data, mesh.fsdp, mesh.tensor) a size.")
  devices = devices or math.prod(sizes)
  if devices < 1:
    raise ConfigError(f"--devices={devices}: a mesh has at least 1 device.")
  xla_flags.simulate_cpu_devices(devices)  # before JAX is imported (it reads JAX_PLATFORMS then)
  from research.train.loop import check

  check(config)
  xla_flags.apply(profile_name=config.xla_profile)  # before JAX starts its backend
  from research.train import compile_only as plan

  plan.run(config, devices, accelerator)


# --- evaluate ----------------------------------------------------------------------------------------------


def check_workdir(workdir: str) -> None:
  """A --workdir that must hold a training run: a one-line error when there is no such directory."""
  if not Path(workdir).is_dir():
    raise ConfigError(f"--workdir {workdir} does not exist: give the workdir of a training run "
                      f"(the --workdir it was trained with).")


def evaluate_parser() -> Parser:
  p = script_parser("evaluate.py", "Evaluate a checkpoint of a training run on a whole split, exactly as training "
                    "evaluates.",
                    "Writes WORKDIR/eval/<split>_<step>.json. For a classifier it also reports per-class precision, "
                    "recall, F1\nand the confusion matrix: printed, in the JSON, and drawn in "
                    "WORKDIR/eval/<split>_<step>_confusion.png.\n\n"
                    "  python scripts/evaluate.py --workdir runs/mnist_mlp --step best --split test")
  p.add_argument("--workdir", required=True, metavar="DIR",
                 help="the training run's workdir (config.json, checkpoints/)")
  p.add_argument("--step", default="latest", metavar="STEP",
                 help="which checkpoint: latest (default), best (the one marked by the config's "
                 "checkpoint.best_metric), or a step number")
  p.add_argument("--split", default="test", metavar="SPLIT",
                 help="the dataset split to evaluate on: test (default) or train")
  p.add_argument("--json", action="store_true", help="print the full result as one JSON document instead of tables")
  return p


def evaluate(argv: list[str]) -> None:
  """Evaluates a checkpoint of a run, prints the report and writes WORKDIR/eval/<split>_<step>.json (+ PNG)."""
  args = evaluate_parser().parse_args(argv)
  step = parse_step(args.step)
  check_workdir(args.workdir)
  from research.train import evaluate as evaluate_lib

  result = evaluate_lib.evaluate_checkpoint(args.workdir, step, args.split)
  written = evaluate_lib.write(result, args.workdir)
  if args.json:
    print(json.dumps(result, indent=2))
    return
  print(evaluate_lib.report(result))
  print("wrote " + ", ".join(str(p) for p in written))


# --- explain -----------------------------------------------------------------------------------------------


def explain(argv: list[str]) -> None:
  """Attributions and attention maps of a trained run (research/explain/cli.py holds the flags)."""
  from research.explain.cli import explain as run

  run(argv)


COMMANDS = {"train": train, "evaluate": evaluate, "explain": explain}


@contextlib.contextmanager
def entry_point(argv: list[str], workdir: str | None = None, *, creates_workdir: bool = False) -> Iterator[None]:
  """The process settings of a script, made before anything imports JAX: the quiet console (research/console.py,
  unless --verbose), the malloc settings and the library's default XLA flags."""
  with contextlib.ExitStack() as stack:
    if not console.verbose_flag(argv):
      stack.enter_context(console.quiet(console.log_path(workdir, create_workdir=creates_workdir)))
    host_memory.apply()
    try:
      xla_flags.apply()
    except ValueError as e:  # a bad RESEARCH_XLA_DEFAULTS
      raise ConfigError(str(e)) from None
    yield


def main(command: str, argv: list[str]) -> int:
  """Runs a command; bad input exits 2 and a failed run exits 1, each with a one-line message."""
  try:
    with entry_point(argv, console.flag_value(argv, "--workdir"), creates_workdir=command == "train"):
      COMMANDS[command](argv)
    return 0
  except (ConfigError, DataUnavailableError, CheckpointError, TrainingError, WorkdirWriteError) as e:
    print(f"error: {e}", file=sys.stderr)
    return exit_code(e)
  except BrokenPipeError:  # e.g. `evaluate.py ... | head` (an OSError: caught before the one below)
    return stdout_closed()
  except OSError as e:  # a full disk or lost permissions where no step is involved (config.json, dataset.json)
    where = f"Reading or writing {e.filename}" if e.filename else "Reading or writing a file"
    print(f"error: {where} failed: {e.strerror or e}. Free space or fix permissions, then rerun.", file=sys.stderr)
    return exit_code(e)
  except KeyboardInterrupt as e:  # Ctrl-C twice in training, or once in evaluate/export
    print("error: interrupted; checkpoints already written are intact.", file=sys.stderr)
    return exit_code(e)
