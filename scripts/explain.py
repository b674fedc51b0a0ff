#!/usr/bin/env python
"""Show what a trained model looks at: attributions over images and texts, attention maps per layer and head.

    python scripts/explain.py --workdir runs/mnist_cnn --misclassified 4
    python scripts/explain.py --workdir runs/rotten_tomatoes_transformer --inputs 'a gripping, funny film'
    python scripts/explain.py --workdir runs/shakespeare_gpt --inputs 'ROMEO: But soft, what light'

Writes PNG overlays, highlighted HTML, TensorBoard text and attention maps into WORKDIR/explain
(docs/explain.md). Other libraries' warnings go to WORKDIR/logs/warnings.log; --verbose prints them. See --help.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a checkout without installing.

from research.cli import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main("explain", sys.argv[1:]))
