"""Command-line plumbing shared by scripts/: parse flags and overrides, report errors in one line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from research import atomic
from research.errors import CheckpointError, ConfigError, DataUnavailableError, TrainingError


def parse_train(argv: list[str]):
  """Returns (args, config) where config has every `--config.key=value` override applied."""
  from research import config as config_lib

  parser = argparse.ArgumentParser(description="Train an experiment; rerun to resume.")
  parser.add_argument("--config", required=True, help="configs/<name>.py[:variant]")
  parser.add_argument("--workdir", required=True, help="directory for checkpoints, logs and exports")
  parser.add_argument("--coordinator_address", default=None,
                      help="multi-process: host:port of process 0 (with --num_processes and --process_id)")
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  args, rest = parser.parse_known_args(argv)
  overrides = [a for a in rest if a.startswith(config_lib.OVERRIDE_PREFIX)]
  unknown = [a for a in rest if a not in overrides]
  if unknown:
    raise ConfigError(f"Unrecognized arguments {' '.join(unknown)}; config overrides look like --config.key=value.")
  config = config_lib.load(args.config)
  config_lib.apply_overrides(config, overrides)
  return args, config


def train(argv: list[str]) -> None:
  args, config = parse_train(argv)
  from research import parallel, xla_flags
  from research.train.loop import check, train as run

  check(config)
  xla_flags.apply(profile_name=config.get("xla_profile", "default"))  # before JAX starts its backend
  parallel.initialize(args.coordinator_address, args.num_processes, args.process_id)
  run(config, args.workdir)


def evaluate(argv: list[str]) -> None:
  """Evaluates a checkpoint of a run and writes WORKDIR/eval_<step>.json."""
  parser = argparse.ArgumentParser(description="Evaluate a checkpoint of a training run.")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--step", default="latest", help="a step number, 'latest' or 'best'")
  parser.add_argument("--split", default="test")
  args = parser.parse_args(argv)
  from research.train.evaluate import evaluate_checkpoint

  result = evaluate_checkpoint(args.workdir, args.step, args.split)
  path = Path(args.workdir) / f"eval_{result['step']}.json"
  atomic.write_text(path, json.dumps(result, indent=2) + "\n")
  print(json.dumps(result))


COMMANDS = {"train": train, "evaluate": evaluate}


def main(command: str, argv: list[str]) -> int:
  """Runs a command; bad input exits 2 and a failed run exits 1, each with a one-line message."""
  try:
    COMMANDS[command](argv)
    return 0
  except (ConfigError, DataUnavailableError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (CheckpointError, TrainingError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
