#!/usr/bin/env python
"""Train an experiment.

    python scripts/train.py --config configs/mnist_mlp.py --workdir runs/mnist_mlp [--config.key=value ...]

Rerunning the same command with the same workdir resumes from the latest checkpoint.
`--help` lists the configs and explains the overrides. Other libraries' warnings go
to WORKDIR/logs/warnings.log; --verbose prints them.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a checkout without installing.

from research import host_memory  # noqa: E402
from research.cli import main  # noqa: E402

if __name__ == "__main__":
  host_memory.restart_with_tunables()  # glibc's malloc tunables for the step's buffers (research/host_memory.py)
  sys.exit(main("train", sys.argv[1:]))
