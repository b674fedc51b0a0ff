"""research/host_memory.py: XLA:CPU's per-call temporary buffer stops page-faulting once `host_memory.apply()` ran
(as the scripts and the training loop do), and `import research` alone changes nothing."""

import json
import os
import platform
import statistics
import subprocess
import sys

import pytest

from research import host_memory
from tests import helpers

# glibc's struct mallinfo2 (arena is the heap's size) and libc, for the scripts below.
_MALLINFO2 = """
import ctypes
class Info(ctypes.Structure):  # glibc's struct mallinfo2: arena is the heap's size
  _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
"""

# A jitted call whose 80 MB temporary buffer (tanh(x @ w), the second matmul's input) XLA allocates and frees
# at every call; prints, per call after warm-up, the minor page faults and the size of malloc's heap. XLA frees a
# call's buffer on a worker thread, sometimes after the next call has allocated its own: the heap then grows to a
# new peak (fresh pages, so faults), a few times at most. Reuse is judged on the calls that did not grow it.
# Some sandboxes (gVisor) report no minor faults at all, and with transparent huge pages a first touch faults
# once per 2 MiB: the first line printed is the faults of first-touching 64 MiB, which says whether faults count.
_FAULTS_PER_CALL = _MALLINFO2 + """
import json, mmap, resource
from research import host_memory
host_memory.apply()
import jax, jax.numpy as jnp
fresh = mmap.mmap(-1, 64 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for offset in range(0, len(fresh), 4096):
  fresh[offset] = 1
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
x, w, v = jnp.ones((40000, 128)), jnp.ones((128, 512)), jnp.ones((512, 8))
f = jax.jit(lambda x, w, v: jnp.tanh(x @ w) @ v)  # the 80 MB tanh(x @ w) cannot fuse into the second matmul
calls = []
for _ in range(24):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x, w, v).block_until_ready()
  calls.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, libc.mallinfo2().arena))
print(json.dumps(calls[3:]))
"""


def _calls(defaults: str) -> tuple[int, list[tuple[int, int]]]:
  """The faults of first-touching 64 MiB, and (faults, heap size) per call."""
  env = {**os.environ, "RESEARCH_MALLOC_DEFAULTS": defaults}
  done = subprocess.run([sys.executable, "-c", _FAULTS_PER_CALL], capture_output=True, text=True, env=env,
                        timeout=300, cwd=str(helpers.ROOT))
  assert done.returncode == 0, done.stderr[-2000:]
  touch, calls = done.stdout.strip().splitlines()[-2:]
  return int(touch), json.loads(calls)


def test_the_temporary_buffer_is_reused_without_page_faults():
  touch, glibc_calls = _calls("0")
  _, tuned = _calls("1")
  # The mechanism, seen by malloc: by default the 80 MB buffer is mmapped per call and never joins the heap;
  # tuned, it stays in the heap, which most calls reuse without growing.
  assert max(heap for _, heap in glibc_calls) < 80 << 20, glibc_calls
  assert tuned[-1][1] >= 80 << 20, tuned
  assert tuned[-1][1] < 1 << 30, tuned  # the heap stops at a few buffers' worth
  reused = [faults for (faults, heap), (_, previous) in zip(tuned[1:], tuned) if heap == previous]
  assert len(reused) >= len(tuned) // 2, tuned
  # The effect, seen by the kernel, where it counts a fault per 4 KiB page first touched.
  if touch >= 16_000:
    glibc = statistics.median(faults for faults, _ in glibc_calls)
    assert glibc > 10_000, glibc  # 80 MB of fresh pages touched again at every call
    assert statistics.median(reused) < glibc / 20, (reused, glibc)


def test_switched_off_by_the_environment():
  from research import host_memory

  assert not host_memory.apply({"RESEARCH_MALLOC_DEFAULTS": "0"})


# What `import research` and its modules do to the process: the environment (XLA_FLAGS included) and malloc.
_IMPORT_ALL = """
import importlib, json, os, pkgutil
before = dict(os.environ)
import research
names = [m.name for m in pkgutil.walk_packages(research.__path__, "research.")
         if not m.name.startswith(("research.bench", "research.export.tf", "research.export.tflite"))]
for name in names:
  importlib.import_module(name)
print(json.dumps({"modules": len(names), "changed": sorted(k for k in set(before) | set(os.environ)
                                                           if before.get(k) != os.environ.get(k))}))
"""


def test_importing_the_library_changes_no_environment_variable():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  env.pop("RESEARCH_XLA_ADDED", None)
  done = subprocess.run([sys.executable, "-c", _IMPORT_ALL], capture_output=True, text=True, env=env, timeout=300,
                        cwd=str(helpers.ROOT))
  assert done.returncode == 0, done.stderr[-2000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result["modules"] > 40 and result["changed"] == []


_MALLOC_AFTER_IMPORT = """
import ctypes, json
import research, research.train.loop, research.export.api
class Info(ctypes.Structure):  # glibc's struct mallinfo2: hblks counts blocks served by mmap
  _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                              "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
block = libc.malloc(64 << 20)  # glibc's default: a block this large gets its own mmap
print(json.dumps(libc.mallinfo2().hblks))
"""


def test_importing_the_library_leaves_malloc_alone():
  done = subprocess.run([sys.executable, "-c", _MALLOC_AFTER_IMPORT], capture_output=True, text=True, timeout=300,
                        cwd=str(helpers.ROOT), env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")})
  assert done.returncode == 0, done.stderr[-2000:]
  assert json.loads(done.stdout.strip().splitlines()[-1]) >= 1  # with M_MMAP_MAX=0 (host_memory.apply) it is 0


# A step's buffer as XLA:CPU allocates it (posix_memalign, 64-byte alignment), with small blocks allocated between
# steps that outlive them (a trainer's metrics and batches); prints malloc's heap size (MB) after each step.
_SMALL_BLOCKS_BETWEEN_STEPS = _MALLINFO2 + """
import json
from research import host_memory
host_memory.apply()
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
kept, heaps = [], []
for step in range(12):
  buffer = ctypes.c_void_p()
  assert libc.posix_memalign(ctypes.byref(buffer), 64, 80 << 20) == 0
  kept += [libc.malloc(size) for size in (24, 40, 100, 2000)]
  libc.free(buffer)
  heaps.append(libc.mallinfo2().arena >> 20)
print(json.dumps(heaps))
"""


def _heaps(env: dict[str, str]) -> list[int]:
  done = subprocess.run([sys.executable, "-c", _SMALL_BLOCKS_BETWEEN_STEPS], capture_output=True, text=True,
                        env=env, timeout=300, cwd=str(helpers.ROOT))
  assert done.returncode == 0, done.stderr[-2000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_small_blocks_between_steps_do_not_grow_the_heap_by_a_buffer_per_step():
  if platform.libc_ver()[0] != "glibc":
    pytest.skip(f"{platform.libc_ver()}: the malloc settings are glibc's")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "RESEARCH_MALLOC_DEFAULTS")}
  # host_memory.environment's tunables: the buffer's freed ends coalesce with it, and the heap holds two at most.
  assert max(_heaps(host_memory.environment(env))) <= 2 * 81, host_memory.environment(env).get("GLIBC_TUNABLES")
  # Without them, glibc before 2.38 (whose memalign does not look for an aligned free chunk first) keeps the
  # ends in the thread's tcache: the freed buffer is 96 bytes short of the next request, and the heap grows.
  if host_memory._needs_tunables(env):
    assert _heaps(env)[-1] >= 6 * 80, _heaps(env)


def test_a_script_restarts_itself_once_in_place_with_the_tunables(tmp_path):
  """scripts/train.py's first call: the same process (pid) starts again, once, with TUNABLES in its environment;
  with the library's malloc settings off it does not restart."""
  if not host_memory._needs_tunables({}):
    pytest.skip(f"{platform.libc_ver()}: glibc 2.38 and later (or another libc) need no tunables")
  script = tmp_path / "script.py"
  script.write_text(f"import os, sys\nsys.path.insert(0, {str(helpers.ROOT)!r})\nfrom research import host_memory\n"
                    "print('start', os.getpid(), flush=True)\nhost_memory.restart_with_tunables()\n"
                    "print('main', os.getpid(), os.environ.get('GLIBC_TUNABLES'))\n")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "RESEARCH_MALLOC_DEFAULTS")}
  lines = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         timeout=60).stdout.split("\n")
  pid = lines[0].split()[1]
  assert lines[:3] == [f"start {pid}", f"start {pid}", f"main {pid} {host_memory.TUNABLES}"], lines
  lines = subprocess.run([sys.executable, str(script)], env={**env, "RESEARCH_MALLOC_DEFAULTS": "0"},
                         capture_output=True, text=True, timeout=60).stdout.split("\n")
  assert lines[1] == f"main {lines[0].split()[1]} None", lines


# A freed block below a live one (a hole, as compiling leaves) and a freed block at the heap's top, each 100 MB and
# touched; prints RSS (MB) before and after `release_free_pages`.
_HOLE_AND_TOP = _MALLINFO2 + """
import json
from research import host_memory
host_memory.apply()
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
rss = lambda: int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) >> 10
blocks = [libc.malloc(size) for size in (100 << 20, 1 << 20, 100 << 20)]  # hole, wall, top
for block, size in zip(blocks, (100 << 20, 1 << 20, 100 << 20)):
  libc.memset(block, 1, size)
libc.free(blocks[0])
libc.free(blocks[2])
before = rss()
print(json.dumps([host_memory.release_free_pages(), before, rss()]))
"""


def test_release_free_pages_returns_holes_and_keeps_the_top():
  if platform.libc_ver()[0] != "glibc":
    pytest.skip(f"{platform.libc_ver()}: the malloc settings are glibc's")
  done = subprocess.run([sys.executable, "-c", _HOLE_AND_TOP], capture_output=True, text=True, timeout=120,
                        cwd=str(helpers.ROOT), env={k: v for k, v in os.environ.items() if k != "RESEARCH_MALLOC_DEFAULTS"})
  assert done.returncode == 0, done.stderr[-2000:]
  released, before, after = json.loads(done.stdout.strip().splitlines()[-1])
  assert released and 90 <= before - after <= 110, (before, after)  # the hole's 100 MB, not the top's too
  assert not host_memory.release_free_pages({"RESEARCH_MALLOC_DEFAULTS": "0"})
