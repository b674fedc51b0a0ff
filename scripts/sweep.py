#!/usr/bin/env python
"""Train a config many times with different values: a grid, or random draws, each run in OUT/<run name>.

    python scripts/sweep.py --config configs/mnist_mlp.py --out runs/sweep \
        --grid 'optimizer.learning_rate=1e-3,3e-3' --grid 'model.hidden_sizes=(512,256),(256,)'

Rerunning the same command resumes the sweep. `--help` lists every option; docs/sweeps.md explains them.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a checkout without installing.

from research.sweep.cli import main

if __name__ == "__main__":
  sys.exit(main("sweep", sys.argv[1:]))
