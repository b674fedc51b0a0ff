"""VAE: shapes, the ELBO against an independent numpy computation, overfitting one batch, sampling and
reconstruction, and the :smoke config trained on 8 devices with image grids in TensorBoard."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from research import config as config_lib
from research import losses
from research.errors import ConfigError
from research.models.vae import EVAL_SEED, VAE, build_vae, image_grid
from tests import helpers


def tiny(architecture="mlp", latent_dim=8):
  return VAE((28, 28, 1), latent_dim, architecture=architecture, hidden_sizes=(64,), conv_channels=(8, 16),
             rngs=nnx.Rngs(0))


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_shapes_and_dtypes(architecture):
  model = tiny(architecture)
  x = jax.random.uniform(jax.random.key(0), (5, 28, 28, 1))
  logits, mean, logvar = model(x, rngs=nnx.Rngs(dropout=1))
  assert logits.shape == (5, 28, 28, 1) and mean.shape == logvar.shape == (5, 8)
  assert logits.dtype == mean.dtype == jnp.float32
  assert model.sample(3, jax.random.key(1)).shape == (3, 28, 28, 1)
  recon = model.reconstruct(x)
  assert recon.shape == x.shape and float(recon.min()) >= 0 and float(recon.max()) <= 1
  np.testing.assert_allclose(model(x)[0], model.decode(mean), atol=1e-6)  # no rngs: z = posterior mean
  loss, sums = model.loss({"image": x}, train=False)
  assert loss.shape == () and set(sums) == {"nelbo_sum", "recon_sum", "kl_sum", "count"}
  np.testing.assert_allclose(sums["nelbo_sum"], sums["recon_sum"] + sums["kl_sum"], rtol=1e-6)


def numpy_elbo(logits, targets, mean, logvar):
  """The same quantities written independently: log p(x|z) with log-sigmoids, KL with the std."""
  logits, targets = np.asarray(logits, np.float64), np.asarray(targets, np.float64)
  log_p1 = -np.logaddexp(0.0, -logits)  # log sigmoid(l)
  log_p0 = -np.logaddexp(0.0, logits)   # log (1 - sigmoid(l))
  log_likelihood = (targets * log_p1 + (1 - targets) * log_p0).reshape(len(logits), -1).sum(1)
  std = np.exp(0.5 * np.asarray(logvar, np.float64))
  mean = np.asarray(mean, np.float64)
  kl = (-np.log(std) + (std ** 2 + mean ** 2) / 2 - 0.5).sum(1)  # KL(N(m, s^2) || N(0, 1)) per dimension
  return log_likelihood - kl, log_likelihood, kl


def test_elbo_equals_an_independent_numpy_computation():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (6, 28, 28, 1)).astype(np.float32)
  targets = rng.uniform(0, 1, (6, 28, 28, 1)).astype(np.float32)
  targets[0] = targets[0] > 0.5  # binary and grey targets
  mean = rng.normal(0, 1, (6, 10)).astype(np.float32)
  logvar = rng.normal(0, 1, (6, 10)).astype(np.float32)
  got = losses.elbo(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(mean), jnp.asarray(logvar))
  for value, expected in zip(got, numpy_elbo(logits, targets, mean, logvar)):
    assert value.shape == (6,)
    np.testing.assert_allclose(np.asarray(value), expected, rtol=1e-5, atol=1e-3)
  # The analytic KL agrees with a Monte Carlo estimate of E_q[log q(z) - log p(z)].
  z = mean[:1] + np.exp(0.5 * logvar[:1]) * rng.normal(size=(200_000, 10))
  log_q = (-0.5 * ((z - mean[:1]) ** 2 / np.exp(logvar[:1]) + logvar[:1])).sum(1)
  log_p = (-0.5 * z ** 2).sum(1)
  assert float(got[2][0]) == pytest.approx(np.mean(log_q - log_p), rel=0.01)
  assert float(losses.elbo(jnp.zeros((1, 4)), jnp.ones((1, 4)), jnp.zeros((1, 2)), jnp.zeros((1, 2)))[0][0]) \
      == pytest.approx(4 * np.log(0.5))  # p = 1/2 per pixel, q = prior


def test_loss_uses_the_elbo_and_the_row_mask():
  model = tiny()
  x = jax.random.uniform(jax.random.key(2), (4, 28, 28, 1))
  mask = jnp.array([1.0, 0.0, 1.0, 0.0])
  _, sums = model.loss({"image": x, "mask": mask}, train=False)
  mean, logvar = model.encode(x)  # evaluation draws z with the fixed key EVAL_SEED
  z = VAE.reparameterize(mean, logvar, jax.random.key(EVAL_SEED))
  value, log_likelihood, kl = (np.asarray(v) for v in losses.elbo(model.decode(z), x, mean, logvar))
  keep = np.asarray(mask) > 0
  assert float(sums["count"]) == 2
  np.testing.assert_allclose(sums["nelbo_sum"], -value[keep].sum(), rtol=1e-5)
  np.testing.assert_allclose(sums["recon_sum"], -log_likelihood[keep].sum(), rtol=1e-5)
  np.testing.assert_allclose(sums["kl_sum"], kl[keep].sum(), rtol=1e-5)
  # Training draws fresh noise from the step's rng; evaluation is deterministic.
  a = model.loss({"image": x}, train=True, rngs=nnx.Rngs(dropout=0))[0]
  b = model.loss({"image": x}, train=True, rngs=nnx.Rngs(dropout=1))[0]
  assert float(a) != float(b)
  assert float(model.loss({"image": x}, train=False)[0]) == float(model.loss({"image": x}, train=False)[0])


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_overfits_one_small_batch(architecture):
  model = tiny(architecture, latent_dim=4)
  x = (jax.random.uniform(jax.random.key(3), (4, 28, 28, 1)) > 0.7).astype(jnp.float32)  # 4 binary images
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state, key):
    loss_fn = lambda p: nnx.merge(graphdef, p, rest).loss({"image": x}, train=True, rngs=nnx.Rngs(dropout=key))
    (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, sums

  opt_state = tx.init(params)
  first = None
  for i in range(600):
    params, opt_state, sums = step(params, opt_state, jax.random.key(i))
    first = first or float(sums["nelbo_sum"]) / 4
  _, sums = nnx.merge(graphdef, params, rest).loss({"image": x}, train=False)
  nelbo, recon = float(sums["nelbo_sum"]) / 4, float(sums["recon_sum"]) / 4
  assert first > 400 and nelbo < 15 and recon < 3, (first, nelbo, recon)  # the KL keeps a few nats


def test_summaries_are_image_grids_in_unit_range():
  model = tiny()
  batch = {"image": np.asarray(jax.random.uniform(jax.random.key(4), (16, 28, 28, 1)))}
  out = model.summaries(batch, jax.random.key(5))
  assert set(out) == {"vae/reconstructions", "vae/prior_samples"}
  recon, prior = out["vae/reconstructions"], out["vae/prior_samples"]
  assert recon.shape == (4 * 30 + 2, 8 * 30 + 2, 1) and prior.shape == (4 * 30 + 2, 4 * 30 + 2, 1)
  assert recon.dtype == prior.dtype == np.float32 and 0 <= recon.min() and recon.max() <= 1
  np.testing.assert_allclose(recon[2:30, 2:30], batch["image"][0], atol=1e-6)  # row 1: originals
  np.testing.assert_allclose(recon[32:60, 2:30], model.reconstruct(batch["image"][:1])[0], atol=1e-5)
  again = model.summaries(batch, jax.random.key(5))["vae/prior_samples"]
  np.testing.assert_array_equal(prior, again)  # seeded
  assert image_grid(np.zeros((3, 2, 2, 1)), columns=2).shape == (10, 10, 1)  # 2 x 2 cells of 2 + 2 padding, + 2


def test_build_rejects_inputs_outside_the_unit_range():
  config = config_lib.load("configs/mnist_vae.py").model
  with pytest.raises(ConfigError, match="normalize"):
    build_vae(config, np.full((2, 28, 28, 1), -0.4, np.float32), nnx.Rngs(0))
  with pytest.raises(ConfigError, match="flatten"):
    build_vae(config, np.zeros((2, 784), np.float32), nnx.Rngs(0))


def test_smoke_config_trains_on_8_devices_and_logs_image_grids(tmp_path_factory):
  run = helpers.smoke_run(tmp_path_factory, "mnist_vae")  # trained in a test process: 8 devices
  final, workdir = run.final, run.workdir
  assert jax.device_count() == 8
  assert set(final) == {"nelbo", "recon", "kl"} and final["nelbo"] == pytest.approx(final["recon"] + final["kl"])
  assert 100 < final["nelbo"] < 600
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["summaries"] for r in rows if "summaries" in r] == [["vae/prior_samples", "vae/reconstructions"]] * 2
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  events = EventAccumulator(str(workdir / "tensorboard"), size_guidance={"images": 0}).Reload()
  assert {"vae/reconstructions", "vae/prior_samples"} <= set(events.Tags()["images"])
  image = events.Images("vae/reconstructions")[-1]
  assert (image.step, image.height, image.width) == (6, 122, 242)
