"""research: a JAX library for training models and taking them to deployment."""

from research import host_memory, xla_flags

__version__ = "0.1.0"

xla_flags.apply()  # before JAX starts its backend; see research/xla_flags.py
host_memory.apply()  # before JAX starts its threads; see research/host_memory.py
