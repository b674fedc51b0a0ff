"""Vision models (CNN, ResNet), their shared layers, the image datasets and the vision configs."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from research import config as config_lib
from research import parallel
from research.data import cifar10, fashion_mnist, get_split
from research.errors import ConfigError, DataUnavailableError
from research.models.layers import max_pool
from research.models.resnet import stage_sizes
from research.registry import MODELS
from research.train import state as state_lib
from research.train.step import make_steps
from tests import helpers


def _build(name, sample, **fields):
  defaults = {"cnn": dict(channels=(8, 16), kernel_size=3, hidden_size=32, num_classes=10, dropout=0.0,
                          bn_momentum=0.9),
              "resnet": dict(depth=8, width=8, num_classes=10, dropout=0.0, bn_momentum=0.9)}[name]
  config = ml_collections.ConfigDict({**defaults, **fields})
  return MODELS.get(name)(config, jnp.asarray(sample), nnx.Rngs(0))


def _abstract(name, sample, **fields):
  """The model with shapes for values: no initializer runs or compiles (a ResNet's dozens of them take seconds)."""
  return nnx.eval_shape(lambda: _build(name, sample, **fields))


def _images(n, h, w, c, seed=0):
  return np.random.default_rng(seed).normal(size=(n, h, w, c)).astype(np.float32)


# --- Shapes, dtypes, structure. ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, fields, shape, classes", [
    ("cnn", {}, (28, 28, 1), 10),
    ("cnn", dict(channels=(4, 8, 16), kernel_size=5), (32, 32, 3), 7),
    ("resnet", dict(depth=8), (28, 28, 1), 10),
    ("resnet", dict(depth=20, width=16), (32, 32, 3), 10),
    ("resnet", dict(depth=56, width=16), (32, 32, 3), 100),
    ("resnet", dict(depth=18, width=64, num_classes=1000), (224, 224, 3), 1000),
])
def test_output_shapes_and_dtypes(name, fields, shape, classes):
  """Shapes and dtypes by tracing alone (the models run in the overfitting and smoke tests below)."""
  model = _abstract(name, _images(2, *shape), **{"num_classes": classes, **fields})
  out = nnx.eval_shape(lambda m, v: m(v, train=False), model, jax.ShapeDtypeStruct((3, *shape), jnp.float32))
  assert out.shape == (3, classes) and out.dtype == jnp.float32


@pytest.mark.parametrize("depth", [8, 20, 56, 18, 34])
def test_resnet_depth_counts_weighted_layers(depth):
  """depth = convolutions on the main path (stem + 2 per basic block) + the head."""
  model = _abstract("resnet", _images(2, 32, 32, 3), depth=depth, width=4)
  blocks, stem = stage_sizes(depth)
  assert len(model.blocks) == sum(blocks)
  assert stem == ("imagenet" if depth in (18, 34) else "cifar")
  main_path = [m for path, m in nnx.iter_graph(model) if isinstance(m, nnx.Conv) and "shortcut" not in path]
  assert len(main_path) + 1 == depth


def test_resnet18_has_the_reference_parameter_count():
  """torchvision's resnet18 (1000 classes) has 11,689,512 parameters; BatchNorm statistics are not parameters."""
  model = _abstract("resnet", _images(2, 224, 224, 3), depth=18, width=64, num_classes=1000)
  params = nnx.state(model, nnx.Param)
  assert sum(p.size for p in jax.tree.leaves(params)) == 11_689_512


def test_bad_depth_and_flattened_input_are_config_errors():
  with pytest.raises(ConfigError, match="6n\\+2"):
    _build("resnet", _images(2, 32, 32, 3), depth=19)
  with pytest.raises(ConfigError, match="flatten"):
    _build("cnn", _images(2, 28, 28, 1).reshape(2, -1))


# --- Fast pooling. --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, window", [((2, 8, 8, 3), 2), ((2, 7, 7, 4), 2), ((3, 9, 12, 2), 3),
                                           ((1, 6, 10, 5), (2, 5))])
def test_fast_max_pool_equals_nnx_max_pool_with_gradients(shape, window):
  x = jnp.asarray(_images(*shape))
  pair = (window, window) if isinstance(window, int) else window
  reference = lambda v: nnx.max_pool(v, window_shape=pair, strides=pair)
  np.testing.assert_allclose(max_pool(x, window), reference(x), atol=1e-6)
  cotangent = jnp.asarray(_images(*reference(x).shape, seed=1))
  grad = lambda pool: jax.grad(lambda v: jnp.sum(pool(v) * cotangent))(x)
  np.testing.assert_allclose(grad(lambda v: max_pool(v, window)), grad(reference), atol=1e-6)


def test_overlapping_and_same_pooling_fall_back_to_reduce_window():
  x = jnp.asarray(_images(2, 9, 9, 3))
  np.testing.assert_allclose(max_pool(x, 3, 2), nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2)), atol=0)
  np.testing.assert_allclose(max_pool(x, 3, 2, padding="SAME"),
                             nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME"), atol=0)


# --- Overfitting one batch. -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, fields, shape", [
    ("cnn", dict(), (16, 16, 1)),
    ("resnet", dict(depth=8, width=8), (16, 16, 1)),
    ("resnet", dict(depth=18, width=8), (32, 32, 3)),
])
def test_each_model_overfits_one_batch(name, fields, shape):
  x = jnp.asarray(_images(16, *shape))
  y = jnp.asarray(np.arange(16) % 10, jnp.int32)
  model = _build(name, x, **fields)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, rest, opt_state):
    def loss_fn(params):
      m = nnx.merge(graphdef, params, rest, copy=True)
      logits = m(x, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), nnx.state(m, nnx.Not(nnx.Param))
    (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), rest, opt_state, loss

  for _ in range(40):
    params, rest, opt_state, loss = step(params, rest, opt_state)
  assert float(loss) < 0.05, f"{name} {fields}: train loss {float(loss)} after 40 steps"
  trained = nnx.merge(graphdef, params, rest)
  eval_loss = optax.softmax_cross_entropy_with_integer_labels(trained(x, train=False), y).mean()
  assert float(eval_loss) < 0.05  # with BatchNorm's running averages too


# --- BatchNorm: statistics in model_state, synchronised across devices, used in eval. -------------------

def test_batch_statistics_live_in_model_state_not_params():
  model = _build("resnet", _images(2, 28, 28, 1), depth=8)
  _, params, model_state = nnx.split(model, nnx.Param, ...)
  stats = jax.tree.leaves(model_state, is_leaf=lambda v: isinstance(v, nnx.Variable))
  assert stats and all(isinstance(v, nnx.BatchStat) for v in stats)
  # 1 stem + 2 per block + 2 projection shortcuts: one mean and one var each.
  assert len(stats) == 2 * (1 + 2 * 3 + 2)
  assert not any(isinstance(v, nnx.BatchStat) for v in jax.tree.leaves(params, is_leaf=lambda v: isinstance(
      v, nnx.Variable)))


@pytest.mark.parametrize("strategy", ["auto", "pmap"])
def test_batch_statistics_update_in_training_and_are_identical_on_all_devices(strategy):
  config = config_lib.defaults()  # every device on the data axis
  mesh = parallel.make_mesh(config)
  assert mesh.shape[parallel.DATA] == 8
  x = _images(32, 12, 12, 1) * 2.0 + 0.5
  # Give each device's 4 rows a different mean, so a device that saw only its own rows would disagree.
  x += np.repeat(np.arange(8, dtype=np.float32), 4)[:, None, None, None]
  model = _build("cnn", x, channels=(4,), hidden_size=8)
  tx = optax.sgd(0.1)
  graphdef, state = state_lib.create(model, tx, seed=0)
  before = jax.device_get(state.model_state)
  stem_out = model.blocks[0].conv(jnp.asarray(x))  # first BatchNorm's input, before any update
  state = jax.device_put(state, parallel.replicated(mesh))
  train_step, _ = make_steps(graphdef, tx, mesh, strategy=strategy, input_key="image")
  batch = {"image": jax.device_put(x, parallel.batch_sharding(mesh)),
           "label": jax.device_put(np.arange(32, dtype=np.int32) % 10, parallel.batch_sharding(mesh))}
  state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  norm = state.model_state["blocks"][0]["norm"]
  # Running mean after one step with momentum 0.9: 0.1 * the mean over the whole global batch (all devices).
  np.testing.assert_allclose(np.asarray(norm["mean"][...]), 0.1 * np.asarray(stem_out.mean((0, 1, 2))),
                             rtol=1e-4, atol=1e-5)
  for leaf, old in zip(jax.tree.leaves(state.model_state), jax.tree.leaves(before)):
    assert not np.allclose(np.asarray(leaf), np.asarray(old))  # every statistic moved
    shards = [np.asarray(s.data) for s in leaf.addressable_shards]
    assert len(shards) == 8 and all(np.array_equal(shards[0], s) for s in shards[1:])


def test_pmap_step_with_batchnorm_applies_the_mean_of_per_device_gradients():
  """Under parallel.strategy=pmap each device normalizes with its own rows' statistics (as jax.pmap did), and the
  fast BatchNorm path runs there: one SGD step against the mean of 8 per-shard jax.grad's of the reference."""
  from research.models.layers import fast_paths
  from research.models.layers.norm import BatchNorm

  config = config_lib.defaults()  # every device on the data axis
  mesh = parallel.make_mesh(config)
  x = _images(32, 12, 12, 1) + np.repeat(np.arange(8, dtype=np.float32), 4)[:, None, None, None]
  labels = np.arange(32, dtype=np.int32) % 10
  model = _build("cnn", x, channels=(4,), hidden_size=8)
  assert isinstance(model.blocks[0].norm, BatchNorm)
  tx = optax.sgd(0.5)
  graphdef, state = state_lib.create(model, tx, seed=0)
  params, model_state = jax.device_get((state.params, state.model_state))
  train_step, _ = make_steps(graphdef, tx, mesh, strategy="pmap", input_key="image")
  batch = {"image": jax.device_put(x, parallel.batch_sharding(mesh)),
           "label": jax.device_put(labels, parallel.batch_sharding(mesh))}
  state, _ = train_step(jax.device_put(state, parallel.replicated(mesh)), batch)

  reference = fast_paths.configure(_build("cnn", x, channels=(4,), hidden_size=8), False)
  reference_graphdef = nnx.split(reference, nnx.Param, ...)[0]

  def shard_loss(p, rows):
    logits = nnx.merge(reference_graphdef, p, jax.tree.map(jnp.asarray, model_state))(jnp.asarray(x[rows]), train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels[rows]).mean()

  grads = [jax.grad(shard_loss)(params, slice(4 * d, 4 * d + 4)) for d in range(8)]
  mean_grads = jax.tree.map(lambda *g: np.mean(g, axis=0), *grads)
  for new, old, grad in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(params),
                            jax.tree.leaves(mean_grads)):
    np.testing.assert_allclose(new, old - 0.5 * grad, rtol=1e-4, atol=1e-5)


def test_eval_uses_running_averages_and_leaves_them_unchanged():
  x = jnp.asarray(_images(6, 12, 12, 1))
  model = _build("cnn", x, channels=(4,), hidden_size=8)
  norm = model.blocks[0].norm
  norm.mean[...] = jnp.linspace(-1.0, 1.0, 4)
  norm.var[...] = jnp.linspace(0.5, 2.0, 4)
  before = jax.device_get(nnx.state(model, nnx.BatchStat))
  # Eval: a row's output depends on that row only; BatchNorm applies (h - mean) / sqrt(var + eps).
  out = model(x, train=False)
  np.testing.assert_allclose(model(x[:1], train=False), out[:1], rtol=1e-5, atol=1e-5)
  h = model.blocks[0].conv(x[:2])
  expected = (h - norm.mean[...]) / jnp.sqrt(norm.var[...] + norm.epsilon) * norm.scale[...] + norm.bias[...]
  np.testing.assert_allclose(norm(h, use_running_average=True), expected, rtol=1e-5, atol=1e-5)
  assert jax.tree.all(jax.tree.map(np.array_equal, before, jax.device_get(nnx.state(model, nnx.BatchStat))))
  # Train mode normalizes with the batch's own statistics, so rows depend on each other.
  assert not np.allclose(model(x, train=True)[:1], model(x[:1], train=True), atol=1e-3)


# --- Data. ------------------------------------------------------------------------------------------------

def test_fashion_mnist_is_the_real_dataset():
  train_split, test_split = get_split("fashion_mnist", "train"), get_split("fashion_mnist", "test")
  assert train_split["image"].shape == (60_000, 28, 28, 1) and train_split["image"].dtype == np.uint8
  assert test_split["image"].shape == (10_000, 28, 28, 1) and test_split["label"].dtype == np.int32
  assert np.bincount(train_split["label"]).tolist() == [6000] * 10
  assert test_split["label"][:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]  # the published test order
  assert len(fashion_mnist.LABEL_NAMES) == 10 and fashion_mnist.LABEL_NAMES[9] == "Ankle boot"


def test_cifar10_offline_has_only_the_20_real_samples():
  samples = get_split("cifar10_samples", "test")
  assert samples["image"].shape == (20, 32, 32, 3) and samples["image"].dtype == np.uint8
  # The first 20 labels of the CIFAR-10 test set.
  assert samples["label"].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
  assert cifar10.LABEL_NAMES[samples["label"][0]] == "cat"
  with pytest.raises(DataUnavailableError, match="no full offline copy of CIFAR-10 exists"):
    get_split("cifar10", "train")


# --- Configs. ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mnist_cnn", "fashion_mnist_resnet", "cifar10_resnet"])
def test_smoke_config_trains_on_eight_devices(name, tmp_path_factory):
  config = config_lib.load(f"configs/{name}.py:smoke")
  full = config_lib.load(f"configs/{name}.py")
  mlp = config_lib.load("configs/mnist_mlp.py")
  assert set(mlp.to_dict()) <= set(full.to_dict()) and set(mlp.data.to_dict()) <= set(full.data.to_dict())
  assert config.train.steps <= 10 and jax.device_count() == 8
  run = helpers.smoke_run(tmp_path_factory, name)  # trained in a test process: 8 devices
  assert np.isfinite(run.final["loss"]) and 0.0 <= run.final["accuracy"] <= 1.0
  assert (run.workdir / "checkpoints" / str(config.train.steps)).exists()
