"""Command-line plumbing shared by scripts/: parse --config/--workdir and overrides, report errors in one line."""

from __future__ import annotations

import argparse
import sys

from research.errors import ConfigError, DataUnavailableError


def parse(argv: list[str], description: str):
  """Returns (args, config) where config has every `--config.key=value` override applied."""
  from research import config as config_lib

  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--config", required=True, help="configs/<name>.py[:variant]")
  parser.add_argument("--workdir", required=True, help="directory for checkpoints, logs and exports")
  args, rest = parser.parse_known_args(argv)
  overrides = [a for a in rest if a.startswith(config_lib.OVERRIDE_PREFIX)]
  unknown = [a for a in rest if a not in overrides]
  if unknown:
    raise ConfigError(f"Unrecognized arguments {' '.join(unknown)}; config overrides look like --config.key=value.")
  config = config_lib.load(args.config)
  config_lib.apply_overrides(config, overrides)
  return args, config


def main(command: str, argv: list[str]) -> int:
  try:
    if command == "train":
      args, config = parse(argv, "Train an experiment.")
      from research.train.loop import train

      train(config, args.workdir)
    return 0
  except (ConfigError, DataUnavailableError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
