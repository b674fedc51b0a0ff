#!/usr/bin/env python
"""Export a trained run for deployment, parity-checked against JAX, with a manifest.json.

    python scripts/export.py --workdir runs/mnist_mlp [--step latest|best|N] [--format onnx] [--out DIR]
    python scripts/export.py --verify runs/mnist_mlp/export

See `--help` and README.md, section "Export". Other libraries' warnings go to
WORKDIR/logs/warnings.log; --verbose prints them.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a checkout without installing.

from research.export.cli import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
