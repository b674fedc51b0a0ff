"""Data: sources (hub first, offline copies second), preprocessing ops, the input pipeline."""

from research.data import mnist  # noqa: F401  (registers the dataset)
from research.data import shakespeare  # noqa: F401  (registers "shakespeare")
from research.data import imdb, rotten_tomatoes, text, tokenizers  # noqa: F401  (registers text datasets, cleaners, ops)
from research.data.sources import get_split  # noqa: F401  (re-exported: research.data.get_split)
from research.data import token_windows  # noqa: F401  (registers the family "tokens:DIR")
from research.data import cifar10, fashion_mnist  # noqa: F401  (registers "fashion_mnist", "cifar10", "cifar10_samples")
