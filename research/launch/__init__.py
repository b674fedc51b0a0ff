"""Launching `scripts/train.py` as one multi-process run on an existing engine: one module per target.

Each target turns a `Launch` (the train flags, the process layout) into what it
runs or submits, and `--dry_run` prints exactly that. Every process of a run
gets the same train flags; the target adds how processes find each other
(`--coordinator_address` and friends, research/distributed.py).
"""
