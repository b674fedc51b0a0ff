#!/usr/bin/env python
"""Evaluate a checkpoint of a training run and write WORKDIR/eval_<step>.json.

    python scripts/evaluate.py --workdir runs/mnist_mlp [--step N|latest|best] [--split test]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a checkout without installing.

from research.cli import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main("evaluate", sys.argv[1:]))
