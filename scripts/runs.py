#!/usr/bin/env python
"""Compare training runs: config differences, final and best metrics and wall time, as markdown or CSV.

    python scripts/runs.py runs/sweep --sort best/eval/accuracy
    python scripts/runs.py runs/sweep --plot eval/accuracy,train/loss --out runs/sweep/curves.png

`--help` lists every option; docs/sweeps.md explains them.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a checkout without installing.

from research.sweep.cli import main

if __name__ == "__main__":
  sys.exit(main("runs", sys.argv[1:]))
