"""research: a JAX library for training models and taking them to deployment."""

from research import xla_flags

__version__ = "0.1.0"

xla_flags.apply()  # before JAX starts its backend; see research/xla_flags.py
