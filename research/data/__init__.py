"""Data: sources (hub first, offline copies second), preprocessing ops, the input pipeline."""

from research.data import mnist  # noqa: F401  (registers the dataset)
from research.data.sources import get_split
