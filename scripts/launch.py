#!/usr/bin/env python
"""Launch one multi-process training run on an existing engine: local, slurm, kubernetes or tpu-vm.

    python scripts/launch.py local --num_processes 2 --config configs/mnist_mlp.py --workdir runs/mnist_mlp_2proc

Every flag the target does not take goes to scripts/train.py; --dry_run prints what would run. See docs/clusters.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a checkout without installing.

from research.launch.cli import main

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
