"""research: a JAX library for training models and taking them to deployment.

Importing it changes nothing in the process: the entry points (scripts/, and
`research.train.loop.train`) apply the XLA flags (research/xla_flags.py) and the
malloc settings (research/host_memory.py) before JAX starts.
"""

__version__ = "0.1.0"
