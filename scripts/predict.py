#!/usr/bin/env python
"""Predict with an exported model, from its export directory alone.

    python scripts/predict.py --export runs/mnist_mlp/export digit.png batch.npy

Image models take image files and .npy arrays; text models take texts or .txt files
(one text per line). Every file of the export is checked against its manifest first.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a checkout without installing.

from research.serve.cli import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
