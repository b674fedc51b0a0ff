"""research.train.hooks_core.evaluate: exact sums over a whole split, with few enough programs in flight.

XLA:CPU deadlocks with ~30 multi-device programs dispatched and none awaited (DESIGN.md): an evaluation that
added its sums leaf by leaf, eagerly, dispatched ~110 between waits; a 2-process run hung in it."""

import jax
import jax.numpy as jnp
import numpy as np

from research import config as config_lib
from research import parallel
from research.train import hooks_core

LEAVES = [f"sum_{i}" for i in range(6)]


def test_sums_are_exact_and_each_batch_is_two_programs_with_a_wait_every_few(monkeypatch):
  config = config_lib.defaults()
  config.data.eval_batch_size = 8
  mesh = parallel.make_mesh(config)
  values = np.arange(100 * 3, dtype=np.float32).reshape(100, 3)
  step = jax.jit(lambda batch: {name: jnp.sum(batch["x"] * batch["mask"][:, None]) * (i + 1)
                                for i, name in enumerate(LEAVES)})
  assert hasattr(hooks_core.accumulate, "lower")  # jitted: the sums of every leaf in one program
  calls, waits = [], []
  monkeypatch.setattr(hooks_core, "accumulate", lambda sums, new: calls.append("add") or
                      jax.tree.map(jnp.add, sums, new))  # (still counted as the one program it is)
  real_wait = jax.block_until_ready
  monkeypatch.setattr(hooks_core.jax, "block_until_ready", lambda x: waits.append(len(calls)) or real_wait(x))
  sums = hooks_core.evaluate(lambda state, batch: calls.append("step") or step(batch), None, {"x": values}, config,
                             mesh, lambda b: b, summarize=lambda s: s)
  for i, name in enumerate(LEAVES):  # 13 batches, the last padded: the mask keeps only the 100 real rows
    assert float(sums[name]) == values.sum() * (i + 1)
  assert calls.count("step") == 13 and calls.count("add") == 12  # one accumulation per batch after the first
  bound = hooks_core.MAX_UNAWAITED_STEPS
  assert waits and all(b - a <= bound for a, b in zip([0] + waits, waits + [len(calls)])), (waits, len(calls))
