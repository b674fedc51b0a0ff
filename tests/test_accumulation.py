"""Gradient accumulation (research/train/accumulation.py): the large batch's update in less memory."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from research import config as config_lib
from research import parallel
from research.errors import ConfigError
from research.train import accumulation, experiment
from research.train.step import make_steps

GPT = {"name": "gpt", "vocab_size": 64, "block_size": 16, "num_layers": 2, "num_heads": 2, "embed_dim": 32,
       "mlp_ratio": 4, "dropout": 0.0, "tie_embeddings": True, "sample_prompt_length": 4, "sample_tokens": 0,
       "sample_temperature": 1.0, "sample_top_k": 0}


def _gpt_step(strategy: str, grad_accum_steps: int, tokens: np.ndarray):
  """The library's train step for a tiny GPT on all 8 devices; its state at step 0 and the sharded batch."""
  config = config_lib.defaults()
  config.model, config.data.input_key = dict(GPT), "tokens"
  mesh = parallel.make_mesh(config)
  model = experiment.build_model(config, {"tokens": tokens}, lambda b: b)
  graphdef, state, tx, _ = experiment.build_state(config, model, 10, mesh)
  step, _ = make_steps(graphdef, tx, mesh, strategy=strategy, input_key="tokens", grad_accum_steps=grad_accum_steps)
  return step, state, jax.device_put({"tokens": tokens}, parallel.batch_sharding(mesh))


def test_four_microbatches_give_the_large_batchs_update_in_less_memory():
  tokens = np.random.default_rng(0).integers(0, 64, (32, 17)).astype(np.int32)
  results = {}
  for strategy, accum in (("auto", 1), ("auto", 4), ("pmap", 4)):
    step, state, batch = _gpt_step(strategy, accum, tokens)
    compiled = step.lower(state, batch).compile()
    new_state, step_metrics = compiled(state, batch)
    results[strategy, accum] = (compiled.memory_analysis().temp_size_in_bytes, np.asarray(step_metrics),
                                jax.device_get(new_state.params))
  temp, metrics, params = results["auto", 1]
  for key in (("auto", 4), ("pmap", 4)):
    np.testing.assert_allclose(results[key][1], metrics, rtol=1e-5, atol=1e-6)  # loss, gradient norm, flag
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), results[key][2], params)
  assert results["auto", 4][0] < 0.85 * temp, (results["auto", 4][0], temp)


def test_microbatches_are_weighted_by_their_counts_and_thread_the_model_state():
  """A masked mean loss whose microbatches hold different numbers of real rows: the accumulated gradient is
  the whole batch's, not the plain mean of the microbatches' (which would weigh a row of a sparse one more)."""
  rng = np.random.default_rng(1)
  x, y = rng.standard_normal((12, 3)).astype(np.float32), rng.standard_normal(12).astype(np.float32)
  mask = np.array([1, 1, 1, 1, 0, 0, 1, 0, 1, 0, 1, 1], np.float32)  # microbatch i holds rows i, i + 3, ...
  w = jnp.array([0.5, -1.0, 2.0])

  def loss(w, batch):
    return jnp.sum((batch["x"] @ w - batch["y"]) ** 2 * batch["mask"]) / jnp.sum(batch["mask"])

  def loss_and_grads(w, calls, batch, rng):
    value, grads = jax.value_and_grad(loss)(w, batch)
    return (value, (jnp.sum(batch["mask"]), calls + 1)), grads  # the model state counts the microbatches

  batch = {"x": x, "y": y, "mask": mask}
  value, grads, calls = accumulation.accumulate(loss_and_grads, w, 0, batch, jax.random.key(0), 3)
  np.testing.assert_allclose(value, loss(w, batch), rtol=1e-6)
  np.testing.assert_allclose(grads, jax.grad(loss)(w, batch), rtol=1e-6)
  assert int(calls) == 3
  assert np.asarray(accumulation.split({"m": mask}, 3)["m"]).tolist() == [[1, 1, 1, 0], [1, 0, 0, 1], [1, 0, 1, 1]]


def test_a_count_that_does_not_divide_the_per_device_batch_is_one_config_error():
  accumulation.check(64, 8, 4)
  with pytest.raises(ConfigError, match=r"grad_accum_steps=3 does not divide the per-device batch of 8 "
                                        r"\(data.batch_size=64 over 8 devices\); choose one of 1, 2, 4, 8"):
    accumulation.check(64, 8, 3)
  assert isinstance(config_lib.defaults().train.grad_accum_steps, int)
  assert ml_collections.ConfigDict(config_lib.defaults()).train.grad_accum_steps == 1
