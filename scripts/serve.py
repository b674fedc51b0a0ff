#!/usr/bin/env python
"""Serve exported models over HTTP (a JSON API and the Open Inference Protocol).

    python scripts/serve.py --keys keys.json --add_key team-a         # prints a new API key once
    python scripts/serve.py --model mnist=runs/mnist_mlp/export --keys keys.json

See docs/serving.md.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a checkout without installing.

from research.serve.server import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
