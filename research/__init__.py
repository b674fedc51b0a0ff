"""research: a JAX library for training models and taking them to deployment."""

__version__ = "0.1.0"
