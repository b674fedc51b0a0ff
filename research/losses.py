"""Losses: pure functions of (model outputs, batch) returning per-example values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from research.registry import LOSSES


@LOSSES.register("cross_entropy")
def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels and optional label smoothing."""
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


@LOSSES.register("elbo")
def elbo(logits: jax.Array, targets: jax.Array, mean: jax.Array, logvar: jax.Array
         ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-example evidence lower bound (nats) of a VAE with a Bernoulli decoder and a diagonal Gaussian
  posterior q(z|x) = N(mean, exp(logvar)) under a standard normal prior.

  Inputs: decoder `logits` and `targets` in [0, 1] of the same shape [B, ...] (pixels; grey levels give
  the usual "Bernoulli on grey levels" cross-entropy), `mean` and `logvar` float[B, latent].
  Returns (elbo, log_likelihood, kl), each float[B]: elbo = log_likelihood - kl, where
  log_likelihood = sum over pixels of t log sigmoid(l) + (1 - t) log sigmoid(-l) (one sample of z), and
  kl = KL(q(z|x) || N(0, I)) = 0.5 * sum(exp(logvar) + mean^2 - 1 - logvar), computed analytically.
  """
  axes = tuple(range(1, logits.ndim))
  log_likelihood = -jnp.sum(optax.sigmoid_binary_cross_entropy(logits, targets.astype(logits.dtype)), axis=axes)
  kl = 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)
  return log_likelihood - kl, log_likelihood, kl


def masked_mean(values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  if mask is None:
    return jnp.mean(values)
  return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _mean_over_examples(values: jax.Array) -> jax.Array:
  """float[B, ...] -> float[B]: the mean over every axis but the first (a no-op on float[B])."""
  return jnp.mean(values, axis=tuple(range(1, values.ndim))) if values.ndim > 1 else values


@LOSSES.register("binary_cross_entropy")
def binary_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example sigmoid cross-entropy from logits (numerically stable).

  Inputs: `logits` float[B] or float[B, ...] (one independent binary label per
  element, e.g. multi-label), `targets` of the same shape in [0, 1] (soft targets allowed).
  Returns float[B]: -[t log sigmoid(l) + (1 - t) log sigmoid(-l)], averaged over the
  non-batch axes.
  """
  return _mean_over_examples(optax.sigmoid_binary_cross_entropy(logits, targets.astype(logits.dtype)))


@LOSSES.register("mse")
def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example squared error, averaged over the non-batch axes: float[B, ...] -> float[B]."""
  return _mean_over_examples(jnp.square(predictions - targets.astype(predictions.dtype)))


@LOSSES.register("hinge")
def multiclass_hinge(logits: jax.Array, labels: jax.Array, margin: float = 1.0) -> jax.Array:
  """Per-example multiclass hinge loss of Crammer & Singer (2001), as scikit-learn's `hinge_loss`.

  Inputs: `logits` float[B, C] scores, `labels` int[B].
  Returns float[B]: max(0, margin + max_{j != y} s_j - s_y).
  """
  true = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
  others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
  return jnp.maximum(0.0, margin + jnp.max(others, axis=-1) - true)
