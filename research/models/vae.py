"""Variational autoencoder with MLP or convolutional encoder/decoder and a Bernoulli pixel likelihood.

    model = VAE((28, 28, 1), latent_dim=32, architecture="mlp", hidden_sizes=(512, 256), rngs=nnx.Rngs(0))
    logits, mean, logvar = model(images, rngs=nnx.Rngs(dropout=key))   # images float[B, 28, 28, 1] in [0, 1]
    probs = model.sample(16, key)                                       # decoded draws from the prior
    probs = model.reconstruct(images)                                   # decoded posterior means

The encoder maps an image to the mean and log-variance of a diagonal Gaussian
q(z|x); z = mean + exp(logvar / 2) * eps with eps ~ N(0, I) (the
reparameterization trick, so gradients flow through the sample); the decoder
maps z to per-pixel Bernoulli logits. The training objective is the negative
ELBO (research.losses.elbo): reconstruction cross-entropy plus the analytic KL
to the N(0, I) prior, in nats per image.

Pixels are used as grey levels in [0, 1] (preprocess with `normalize(0.0, 1.0)`)
and scored with the Bernoulli cross-entropy against them, the convention of the
PyTorch and Keras VAE examples; no binarization.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research import losses
from research.errors import ConfigError
from research.registry import MODELS

EVAL_SEED = 0  # evaluation draws z with a fixed key, so eval metrics are deterministic


class MLPEncoder(nnx.Module):
  """float[B, H, W, C] -> (mean, logvar), each float[B, latent]: flatten, Dense+ReLU layers, linear head."""

  def __init__(self, image_shape: Sequence[int], hidden_sizes: Sequence[int], latent_dim: int, *, rngs: nnx.Rngs):
    sizes = [int(np.prod(image_shape)), *hidden_sizes]
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.head = nnx.Linear(sizes[-1], 2 * latent_dim, rngs=rngs)

  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for layer in self.hidden:
      x = jax.nn.relu(layer(x))
    return jnp.split(self.head(x), 2, axis=-1)


class MLPDecoder(nnx.Module):
  """float[B, latent] -> float[B, H, W, C] logits: Dense+ReLU layers (hidden sizes reversed), linear output."""

  def __init__(self, image_shape: Sequence[int], hidden_sizes: Sequence[int], latent_dim: int, *, rngs: nnx.Rngs):
    self.image_shape = tuple(image_shape)
    sizes = [latent_dim, *reversed(hidden_sizes)]
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.head = nnx.Linear(sizes[-1], int(np.prod(image_shape)), rngs=rngs)

  def __call__(self, z):
    for layer in self.hidden:
      z = jax.nn.relu(layer(z))
    return self.head(z).reshape(z.shape[0], *self.image_shape)


class ConvEncoder(nnx.Module):
  """float[B, H, W, C] -> (mean, logvar): 3x3 stride-2 conv+ReLU layers (each halves H and W), flatten,
  Dense+ReLU layers, linear head."""

  def __init__(self, image_shape: Sequence[int], channels: Sequence[int], hidden_sizes: Sequence[int],
               latent_dim: int, *, rngs: nnx.Rngs):
    h, w, c = image_shape
    chans = [c, *channels]
    self.convs = nnx.List([nnx.Conv(a, b, kernel_size=(3, 3), strides=2, padding="SAME", rngs=rngs)
                           for a, b in zip(chans[:-1], chans[1:])])
    scale = 2 ** len(channels)
    sizes = [(h // scale) * (w // scale) * chans[-1], *hidden_sizes]
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.head = nnx.Linear(sizes[-1], 2 * latent_dim, rngs=rngs)

  def __call__(self, x):
    for conv in self.convs:
      x = jax.nn.relu(conv(x))
    x = x.reshape(x.shape[0], -1)
    for layer in self.hidden:
      x = jax.nn.relu(layer(x))
    return jnp.split(self.head(x), 2, axis=-1)


class ConvDecoder(nnx.Module):
  """float[B, latent] -> float[B, H, W, C] logits: Dense+ReLU layers to a [H/2^n, W/2^n, channels[-1]] map,
  then 3x3 stride-2 transposed convs (each doubles H and W), the last one linear to C channels."""

  def __init__(self, image_shape: Sequence[int], channels: Sequence[int], hidden_sizes: Sequence[int],
               latent_dim: int, *, rngs: nnx.Rngs):
    h, w, c = image_shape
    scale = 2 ** len(channels)
    self.start = (h // scale, w // scale, channels[-1])
    sizes = [latent_dim, *reversed(hidden_sizes), int(np.prod(self.start))]
    self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    chans = [*reversed(channels), c]
    self.deconvs = nnx.List([nnx.ConvTranspose(a, b, kernel_size=(3, 3), strides=2, padding="SAME", rngs=rngs)
                             for a, b in zip(chans[:-1], chans[1:])])

  def __call__(self, z):
    for layer in self.hidden:
      z = jax.nn.relu(layer(z))
    x = z.reshape(z.shape[0], *self.start)
    for i, deconv in enumerate(self.deconvs):
      x = deconv(x)
      if i < len(self.deconvs) - 1:
        x = jax.nn.relu(x)
    return x


class VAE(nnx.Module):
  """Variational autoencoder of images.

  :Inputs:  float[B, H, W, C] images with values in [0, 1].
  :Outputs (`__call__`): (logits float[B, H, W, C] of the Bernoulli decoder, mean float[B, latent],
           logvar float[B, latent]); z is sampled with `rngs.dropout()` when rngs is given, else z = mean.

  architecture "mlp": Dense layers of `hidden_sizes` (decoder mirrored). "conv": stride-2 convolutions
  of `conv_channels` (H and W divisible by 2^len(conv_channels)), then Dense `hidden_sizes`; mirrored.
  """

  def __init__(self, image_shape: Sequence[int], latent_dim: int, *, architecture: str = "mlp",
               hidden_sizes: Sequence[int] = (512, 256), conv_channels: Sequence[int] = (32, 64),
               rngs: nnx.Rngs):
    self.image_shape, self.latent_dim = tuple(int(d) for d in image_shape), latent_dim
    if architecture == "mlp":
      self.encoder = MLPEncoder(self.image_shape, hidden_sizes, latent_dim, rngs=rngs)
      self.decoder = MLPDecoder(self.image_shape, hidden_sizes, latent_dim, rngs=rngs)
    elif architecture == "conv":
      h, w, _ = self.image_shape
      if h % 2 ** len(conv_channels) or w % 2 ** len(conv_channels):
        raise ConfigError(f"model.architecture='conv' with {len(conv_channels)} stride-2 layers needs image "
                          f"height and width divisible by {2 ** len(conv_channels)}, got {h}x{w}.")
      self.encoder = ConvEncoder(self.image_shape, conv_channels, hidden_sizes, latent_dim, rngs=rngs)
      self.decoder = ConvDecoder(self.image_shape, conv_channels, hidden_sizes, latent_dim, rngs=rngs)
    else:
      raise ConfigError(f"model.architecture={architecture!r}; choose 'mlp' or 'conv'.")

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """float[B, H, W, C] -> (mean, logvar) of q(z|x), each float[B, latent]."""
    mean, logvar = self.encoder(x)
    return mean, logvar

  def decode(self, z: jax.Array) -> jax.Array:
    """float[B, latent] -> Bernoulli logits float[B, H, W, C]."""
    return self.decoder(z)

  @staticmethod
  def reparameterize(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
    """z = mean + sigma * eps, eps ~ N(0, I): a sample of q(z|x) that is differentiable in mean and logvar."""
    return mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)

  def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None):
    mean, logvar = self.encode(x)
    z = mean if rngs is None else self.reparameterize(mean, logvar, rngs.dropout())
    return self.decode(z), mean, logvar

  def loss(self, batch, *, train: bool, rngs: nnx.Rngs | None = None):
    """Negative ELBO of `batch["image"]` in nats per image (one z sample per image).

    Training draws z with `rngs.dropout()` (the step's rng); evaluation (rngs None) with a fixed key,
    so eval numbers are reproducible. Returns (mean negative ELBO, sums) with sums = {"nelbo_sum",
    "recon_sum" (reconstruction cross-entropy), "kl_sum", "count"} over rows where `batch["mask"]` is 1.
    """
    x = batch["image"]
    mean, logvar = (a.astype(jnp.float32) for a in self.encode(x))  # float32 under mixed precision too
    key = rngs.dropout() if rngs is not None else jax.random.key(EVAL_SEED)
    logits = self.decode(self.reparameterize(mean, logvar, key)).astype(jnp.float32)
    value, log_likelihood, kl = losses.elbo(logits, x, mean, logvar)
    mask = batch.get("mask")
    weights = jnp.ones(value.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    sums = {"nelbo_sum": -jnp.sum(value * weights), "recon_sum": -jnp.sum(log_likelihood * weights),
            "kl_sum": jnp.sum(kl * weights), "count": jnp.sum(weights)}
    return sums["nelbo_sum"] / jnp.maximum(sums["count"], 1.0), sums

  def sample(self, num: int, key: jax.Array) -> jax.Array:
    """`num` draws z ~ N(0, I) decoded to pixel probabilities: float[num, H, W, C] in [0, 1]."""
    z = jax.random.normal(key, (num, self.latent_dim))
    return jax.nn.sigmoid(self.decode(z))

  def reconstruct(self, x: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Pixel probabilities decoded from q(z|x): from its mean, or from a sample when `key` is given."""
    mean, logvar = self.encode(x)
    z = mean if key is None else self.reparameterize(mean, logvar, key)
    return jax.nn.sigmoid(self.decode(z))

  def export_fn(self, batch):
    """What research/export deploys: the decoder, latents float32[B, latent_dim] -> pixel probabilities
    float32[B, H, W, C] ("probs"), checked on seeded draws from the prior N(0, I), one per example."""
    n = len(batch["image"])
    z = np.random.default_rng(n).standard_normal((n, self.latent_dim)).astype(np.float32)
    return _decode_probs, {"z": z}, ("probs",)

  def summaries(self, batch, rng) -> dict[str, np.ndarray]:
    """TensorBoard images, float[H, W, C] in [0, 1]: `vae/reconstructions` (rows of 8 test images, each
    followed by a row of their reconstructions) and `vae/prior_samples` (a 4x4 grid of prior draws)."""
    graphdef, state = nnx.split(self)
    images, recon, samples = _summary_images(graphdef, state, jnp.asarray(batch["image"], jnp.float32), rng)
    images, recon = np.asarray(images), np.asarray(recon)
    n = len(images) // 8 * 8
    pairs = np.stack([images[:n].reshape(-1, 8, *images.shape[1:]), recon[:n].reshape(-1, 8, *recon.shape[1:])], 1)
    return {"vae/reconstructions": image_grid(pairs.reshape(-1, *images.shape[1:]), columns=8),
            "vae/prior_samples": image_grid(np.asarray(samples), columns=4)}


def _decode_probs(model: VAE, z: jax.Array) -> jax.Array:
  return jax.nn.sigmoid(model.decode(z))


@partial(jax.jit, static_argnums=0)
def _summary_images(graphdef, state, images, rng):
  model = nnx.merge(graphdef, state)
  return images, model.reconstruct(images), model.sample(16, rng)


def image_grid(images: np.ndarray, columns: int, pad: int = 2, background: float = 0.5) -> np.ndarray:
  """float[N, H, W, C] -> one float[rows * (H + pad) + pad, columns * (W + pad) + pad, C] image."""
  n, h, w, c = images.shape
  rows = -(-n // columns)
  grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), background, np.float32)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = image
  return np.clip(grid, 0.0, 1.0)


@MODELS.register("vae")
def build_vae(config, sample: jnp.ndarray, rngs: nnx.Rngs) -> VAE:
  """`config.model` fields: latent_dim, architecture ("mlp" or "conv"), hidden_sizes, conv_channels.
  `sample` is float[B, H, W, C] preprocessed images, which must lie in [0, 1]."""
  sample = np.asarray(sample)
  if sample.ndim != 4:
    raise ConfigError(f"The VAE takes images [batch, height, width, channels]; the preprocessed input has shape "
                      f"{sample.shape}. Remove 'flatten' from data.preprocess.")
  if sample.min() < 0 or sample.max() > 1:
    raise ConfigError(f"The VAE models pixels in [0, 1] (Bernoulli likelihood); the preprocessed input spans "
                      f"[{sample.min():.3g}, {sample.max():.3g}]. Use data.preprocess='normalize(0.0, 1.0)'.")
  return VAE(sample.shape[1:], config.latent_dim, architecture=config.architecture,
             hidden_sizes=tuple(config.hidden_sizes), conv_channels=tuple(config.conv_channels), rngs=rngs)
