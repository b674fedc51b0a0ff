"""Benchmarks behind `scripts/benchmark.py`: each section is a function returning a markdown report.

Timing lives here, never in tests: the machines are shared and noisy, so every
section compares ratios measured in one run, interleaved, with medians.
"""
