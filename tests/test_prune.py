"""Global magnitude pruning (research/prune.py): selection, schedules, exact zeros through training and export."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from research import config as config_lib
from research import optim, prune
from research.errors import ConfigError
from research.models.cnn import CNN
from research.train.loop import train
from tests import helpers


def _params(seed=0):
  """A small CNN's params (conv kernels, BatchNorm scales/biases, dense kernels/biases) set to random values
  of distinct magnitudes."""
  model = nnx.eval_shape(lambda: CNN((28, 28, 1), 10, channels=(4, 8), hidden_size=32, rngs=nnx.Rngs(seed)))
  params = nnx.state(model, nnx.Param)  # shapes only: nothing runs eagerly
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  total = sum(x.size for x in leaves)
  values = (rng.permutation(total) + 1.0) / total * rng.choice([-1.0, 1.0], total)  # distinct magnitudes
  out, offset = [], 0
  for x in leaves:
    out.append(jnp.asarray(values[offset:offset + x.size].reshape(x.shape), jnp.float32))
    offset += x.size
  return jax.tree.unflatten(treedef, out)


def _named(tree) -> dict[str, np.ndarray]:
  return {prune.path_name(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_prunable_weights_are_kernels_not_biases_or_norms():
  names = {name for name, leaf in _named(_params()).items()}
  kernels = {n for n in names if n.endswith("kernel")}
  assert kernels == {"blocks/0/conv/kernel", "blocks/1/conv/kernel", "hidden/kernel", "head/kernel"}
  flat = jax.tree_util.tree_flatten_with_path(_params())[0]
  assert {prune.path_name(p) for p, leaf in flat if prune.prunable(p, leaf)} == kernels


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9])
def test_global_magnitude_selection_equals_numpy(sparsity):
  params = _params()
  mask = _named(prune.global_mask(params, sparsity))
  weights = _named(params)
  kernels = sorted(n for n in weights if n.endswith("kernel"))
  magnitudes = np.concatenate([np.abs(weights[n]).ravel() for n in kernels]).astype(np.float64)
  assert len(np.unique(magnitudes)) == len(magnitudes)  # no ties: the threshold below is unambiguous
  k = int(round(sparsity * magnitudes.size))
  threshold = np.sort(magnitudes)[k - 1]  # the k-th smallest |w| over all kernels of the model
  for name, m in mask.items():
    if name in kernels:
      np.testing.assert_array_equal(m, np.abs(weights[name]) > threshold, err_msg=name)
    else:
      assert m.shape == () and bool(m), name  # biases and BatchNorm parameters are never pruned
  pruned = sum(int(np.sum(~mask[n])) for n in kernels)
  assert pruned == k
  layer_sparsities = {n: float(np.mean(~mask[n])) for n in kernels}
  assert max(layer_sparsities.values()) - min(layer_sparsities.values()) > 0.01  # global, not per layer


def test_a_pruned_weight_stays_pruned_when_the_mask_is_recomputed():
  params = _params()
  first = prune.global_mask(params, 0.5)
  grown = jax.tree.map(lambda w, m: jnp.where(m, w, 100.0), params, first)  # pruned weights now largest
  second = prune.global_mask(grown, 0.8, previous=first)
  for name, (a, b) in {n: (_named(first)[n], _named(second)[n]) for n in _named(first)}.items():
    assert not np.any(b & ~a), name  # nothing pruned at 50% comes back at 80%


def _step(tx):
  @jax.jit
  def step(params, state, i):
    grads = jax.tree.map(lambda x: jax.random.normal(jax.random.fold_in(jax.random.key(1), i), x.shape), params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


@pytest.mark.parametrize("sparsity", [0.8])
def test_one_shot_reaches_the_sparsity_at_start_step_and_leaves_the_rest_alone(sparsity):
  params = _params()
  n = prune.count_prunable(params)
  tx = optax.chain(optax.adam(1e-2), prune.magnitude_pruning(sparsity, start_step=3))
  dense = optax.adam(1e-2)
  step, dense_step = _step(tx), _step(dense)
  p, state, q, dense_state = params, tx.init(params), params, dense.init(params)
  for i in range(6):
    p, state = step(p, state, i)
    q, dense_state = dense_step(q, dense_state, i)
    report = prune.sparsity_report(p)
    assert report["zeros"] == (round(sparsity * n) if i >= 3 else 0), i
    for name, a in _named(p).items():
      if not name.endswith("kernel"):  # biases and norms train as without pruning
        np.testing.assert_array_equal(a, _named(q)[name], err_msg=name)
  assert int(prune.find_state(state).count) == 6


def test_gradual_schedule_is_cubic_recomputed_every_k_updates_and_monotone():
  params = _params()
  n = prune.count_prunable(params)
  tx = optax.chain(optax.sgd(1e-2), prune.magnitude_pruning(0.9, schedule="gradual", start_step=2, end_step=12,
                                                            every=4))
  step = _step(tx)
  p, state, zeros, previous = params, tx.init(params), [], None
  for i in range(16):
    p, state = step(p, state, i)
    zeros.append(prune.sparsity_report(p)["zeros"])
    mask = _named(prune.find_state(state).mask)
    if previous is not None:
      assert all(not np.any(mask[k] & ~previous[k]) for k in mask)
    previous = mask

  def expected(t):
    return round(0.9 * (1 - (1 - (t - 2) / 10) ** 3) * n)

  # the mask is recomputed at updates 2, 6, 10 and 12 (= end_step), and holds in between
  want = [0, 0, expected(2), expected(2), expected(2), expected(2), expected(6), expected(6), expected(6),
          expected(6), expected(10), expected(10), expected(12), expected(12), expected(12), expected(12)]
  assert all(abs(z - w) <= 1 for z, w in zip(zeros, want)), (zeros, want)  # float32 rounding of s * n
  assert zeros[-1] == round(0.9 * n)


@pytest.mark.parametrize("prune_cfg, words", [
    (dict(sparsity=1.0), "prune.sparsity must be in [0, 1)"),
    (dict(sparsity=0.5, schedule="cubic"), "choose one of one_shot, gradual"),
    (dict(sparsity=0.5, schedule="gradual", start_step=10, end_step=10), "set end_step > start_step"),
    (dict(sparsity=0.5, schedule="gradual", end_step=100, every=0), "prune.every must be >= 1"),
])
def test_bad_prune_configs_are_clear_errors(prune_cfg, words):
  config = config_lib.load("configs/mnist_mlp.py:smoke")
  config.prune.update(prune_cfg)
  with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
    optim.build(config, 100)


def test_sparsity_0_builds_the_plain_optimizer():
  config = config_lib.load("configs/mnist_mlp.py:smoke")
  assert config.prune.sparsity == 0.0  # every config has the defaults' prune group, off
  off, _ = optim.build(config, 10)
  config.prune.sparsity = 0.5
  on, _ = optim.build(config, 10)
  params = {"kernel": jnp.ones((3, 2))}
  assert prune.find_state(off.init(params)) is None and prune.find_state(on.init(params)) is not None


# --- Through the real train loop, checkpoints and export. ------------------------------------------------------

def _config(steps, **prune_cfg):
  config = config_lib.load("configs/mnist_mlp.py:smoke")
  config.train.update(dict(steps=steps, log_every=10, eval_every=0))
  config.checkpoint.every = 0
  config.prune.update(prune_cfg)
  return config


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
  """The trained smoke MLP (shared), pruned one-shot to 80% on the first update of a fine-tuning run (init_from)."""
  config = _config(1, sparsity=0.8)
  config.init_from = str(helpers.smoke_run(tmp_path_factory, "mnist_mlp").workdir)
  workdir = tmp_path_factory.mktemp("prune") / "pruned"
  train(config, workdir)
  return workdir


def test_pruned_weights_stay_exactly_zero_after_100_more_training_steps(pruned_run):
  at_prune = helpers.checkpoint_params(pruned_run, 1)
  kernels = sorted(k for k in at_prune if k.endswith("/kernel"))
  n = sum(at_prune[k].size for k in kernels)
  zeros = {k: at_prune[k] == 0 for k in kernels}
  assert sum(int(z.sum()) for z in zeros.values()) == round(0.8 * n)
  config = _config(101, sparsity=0.8)  # rerun in the same workdir: resumes (mask from the checkpoint), 100 more
  config.init_from = json.loads((pruned_run / "config.json").read_text())["init_from"]
  train(config, pruned_run)
  after = helpers.checkpoint_params(pruned_run, 101)
  for k in kernels:
    assert np.all(after[k][zeros[k]] == 0), k  # exactly 0.0, every one of them
    assert np.array_equal(after[k] == 0, zeros[k]), k  # and no other weight happens to be 0
    assert not np.array_equal(after[k], at_prune[k]), k  # while the kept weights trained on
  for k in at_prune:
    if k.endswith("/bias"):  # never masked (a dead unit's bias may stay at its initial 0, though)
      assert np.mean(after[k] != 0) > 0.5 and not np.array_equal(after[k], at_prune[k]), k


def test_gradual_pruning_resumes_exactly(tmp_path):
  kwargs = dict(sparsity=0.9, schedule="gradual", start_step=0, end_step=16, every=4)
  straight = _config(24, **kwargs)
  straight.checkpoint.every = 24
  train(straight, tmp_path / "straight")
  split = _config(24, **kwargs)
  split.checkpoint.every = 24
  split.train.stop_after_steps = 10  # stops between two mask updates, then resumes
  train(split, tmp_path / "split")
  train(split, tmp_path / "split")
  train(split, tmp_path / "split")
  a, b = helpers.checkpoint_params(tmp_path / "straight", 24), helpers.checkpoint_params(tmp_path / "split", 24)
  assert a.keys() == b.keys()
  for k in a:
    assert np.array_equal(a[k], b[k]), k
  kernels = [v for k, v in a.items() if k.endswith("/kernel")]
  assert sum(int(np.sum(v == 0)) for v in kernels) == round(0.9 * sum(v.size for v in kernels))


def test_pruned_weights_are_zero_in_the_exported_onnx_initializers(pruned_run, tmp_path):
  pytest.importorskip("jax2onnx", reason="the `onnx` extra is not installed: pip install -e '.[onnx]'")
  import onnx
  from onnx import numpy_helper

  from research.export import export

  out = export(pruned_run, step=1, formats="onnx", out=tmp_path / "export", log=lambda _: None)
  weights = helpers.checkpoint_params(pruned_run, 1)
  kernels = {k: v for k, v in weights.items() if k.endswith("/kernel")}
  initializers = [numpy_helper.to_array(i) for i in onnx.load(str(out / "model.onnx")).graph.initializer]
  for name, kernel in kernels.items():
    matches = [i for i in initializers if i.shape == kernel.shape and np.array_equal(i, kernel)]
    assert matches, f"{name} {kernel.shape} is not among the ONNX initializers"
    assert np.all(matches[0][kernel == 0] == 0) and np.mean(matches[0] == 0) > 0.5, name
  zeros = sum(int(np.sum(i == 0)) for i in initializers if i.ndim == 2)
  n = sum(k.size for k in kernels.values())
  assert zeros == sum(int(np.sum(k == 0)) for k in kernels.values()) == round(0.8 * n)
