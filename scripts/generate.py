#!/usr/bin/env python
"""Generate text with an exported language model, from its export directory alone.

    python scripts/generate.py --export runs/shakespeare_gpt/export --prompt "ROMEO:" --max_tokens 200 --seed 0

A KV cache makes each token one decode step; past the model's context the window slides, so any
length works. The same seed gives the same text, equal to the trained model's own generation.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a checkout without installing.

from research.serve.cli import main  # noqa: E402

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:], "generate"))
