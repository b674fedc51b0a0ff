#!/usr/bin/env python
"""Tokenize a text corpus into token shards that training streams from disk.

    python scripts/prepare_data.py --input corpus/ --output data/corpus_tokens [--tokenizer byte|char|bpe]
    python scripts/train.py --config configs/shakespeare_gpt.py --workdir runs/corpus_gpt \
        --config.data.name=tokens:data/corpus_tokens

See `--help` and docs/data.md, section "Data at scale".
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Run from a checkout without installing.

from research.data.prepare import main

if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
