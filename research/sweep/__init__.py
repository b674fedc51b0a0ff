"""Sweeps of a config (scripts/sweep.py) and the comparison of runs (scripts/runs.py); docs/sweeps.md."""
