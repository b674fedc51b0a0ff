"""research/host_memory.py: XLA:CPU's per-call temporary buffer stops page-faulting once `import research` ran."""

import json
import os
import subprocess
import sys

from tests import helpers

# A jitted call whose 80 MB temporary buffer (the matmul's output, reduced afterwards) XLA allocates and frees
# at every call; prints the median of the minor page faults per call after warm-up. (The median: this shared
# machine's kernel now and then takes back a few idle pages, whatever the process does.)
_FAULTS_PER_CALL = """
import json, resource, statistics
import research, jax, jax.numpy as jnp
x, w = jnp.ones((40000, 128)), jnp.ones((128, 512))
f = jax.jit(lambda x, w: jnp.sum(jnp.tanh(x @ w), axis=0))
faults = []
for _ in range(12):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x, w).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(statistics.median(faults[3:])))
"""


def _faults_per_call(defaults: str) -> float:
  env = {**os.environ, "RESEARCH_MALLOC_DEFAULTS": defaults}
  done = subprocess.run([sys.executable, "-c", _FAULTS_PER_CALL], capture_output=True, text=True, env=env,
                        timeout=300, cwd=str(helpers.ROOT))
  assert done.returncode == 0, done.stderr[-2000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_temporary_buffer_is_reused_without_page_faults():
  glibc = _faults_per_call("0")
  tuned = _faults_per_call("1")
  assert glibc > 10_000, glibc  # 80 MB of fresh pages (4 KiB each) touched again at every call
  assert tuned < glibc / 20, (tuned, glibc)


def test_switched_off_by_the_environment():
  from research import host_memory

  assert not host_memory.apply({"RESEARCH_MALLOC_DEFAULTS": "0"})
