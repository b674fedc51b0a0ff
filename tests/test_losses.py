"""Losses against independent numpy computations on fixed inputs."""

import jax.numpy as jnp
import numpy as np
import pytest

from research import losses
from research.registry import LOSSES


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 4)).astype(np.float32) * 3
  labels = np.array([0, 1, 2, 3, 1, 2], np.int32)
  return logits, labels


def _log_softmax(x):
  x = x.astype(np.float64)
  shifted = x - x.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def test_softmax_cross_entropy_with_label_smoothing(inputs):
  logits, labels = inputs
  for smoothing in (0.0, 0.1):
    targets = np.eye(4)[labels] * (1 - smoothing) + smoothing / 4
    expected = -(targets * _log_softmax(logits)).sum(-1)
    got = losses.softmax_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), smoothing)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_binary_cross_entropy_from_logits():
  logits = np.array([[-30.0, -2.0, 0.0], [0.5, 3.0, 40.0]], np.float32)  # extremes: must stay finite
  targets = np.array([[0.0, 1.0, 0.5], [1.0, 0.0, 1.0]], np.float32)
  x = logits.astype(np.float64)
  log_p, log_not_p = -np.logaddexp(0, -x), -np.logaddexp(0, x)  # log sigmoid(x), log sigmoid(-x)
  expected = -(targets * log_p + (1 - targets) * log_not_p).mean(-1)
  got = losses.binary_cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
  assert got.shape == (2,)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  one_per_example = losses.binary_cross_entropy(jnp.asarray(logits[:, 1]), jnp.asarray(targets[:, 1]))
  np.testing.assert_allclose(one_per_example, -(targets[:, 1] * log_p[:, 1] + (1 - targets[:, 1]) * log_not_p[:, 1]),
                             rtol=1e-5)


def test_mean_squared_error_per_example():
  rng = np.random.default_rng(1)
  predictions, targets = rng.normal(size=(5, 3, 2)), rng.normal(size=(5, 3, 2))
  got = losses.mean_squared_error(jnp.asarray(predictions, jnp.float32), jnp.asarray(targets, jnp.float32))
  np.testing.assert_allclose(got, ((predictions - targets) ** 2).reshape(5, -1).mean(-1), rtol=1e-5)


def test_multiclass_hinge_is_crammer_singer(inputs):
  logits, labels = inputs
  expected = []
  for scores, y in zip(logits.astype(np.float64), labels):
    others = [s for j, s in enumerate(scores) if j != y]
    expected.append(max(0.0, 1.0 + max(others) - scores[y]))
  got = losses.multiclass_hinge(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  zero = losses.multiclass_hinge(jnp.asarray(np.eye(4, dtype=np.float32) * 5), jnp.arange(4))
  np.testing.assert_array_equal(zero, np.zeros(4))
  sklearn_metrics = pytest.importorskip("sklearn.metrics")
  assert float(jnp.mean(got)) == pytest.approx(sklearn_metrics.hinge_loss(labels, logits, labels=range(4)), rel=1e-5)


def test_losses_are_registered():
  for name in ("cross_entropy", "binary_cross_entropy", "mse", "hinge"):
    assert LOSSES.get(name) is not None
