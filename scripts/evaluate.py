#!/usr/bin/env python
"""Evaluate a checkpoint of a training run on a whole split and write WORKDIR/eval/<split>_<step>.json.

    python scripts/evaluate.py --workdir runs/mnist_mlp [--step N|latest|best] [--split test|train] [--json]

A classifier also gets per-class precision, recall, F1 and a confusion matrix
(printed, in the JSON, and drawn in WORKDIR/eval/<split>_<step>_confusion.png).
Other libraries' warnings go to WORKDIR/logs/warnings.log; --verbose prints them. See --help.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a checkout without installing.

from research.cli import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main("evaluate", sys.argv[1:]))
