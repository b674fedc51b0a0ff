"""Rematerialization of the Transformer's and the GPT's blocks (research/models/layers/remat.py)."""

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from research import config as config_lib
from research import validate
from research.errors import ConfigError
from research.models.layers import remat
from research.registry import MODELS

TOKENS = np.random.default_rng(0).integers(1, 64, (4, 33)).astype(np.int32)
MODELS_AND_LOSSES = {
    "gpt": ({"name": "gpt", "vocab_size": 64, "block_size": 32, "num_layers": 2, "num_heads": 2, "embed_dim": 32,
             "mlp_ratio": 4, "dropout": 0.1, "tie_embeddings": True, "sample_prompt_length": 4, "sample_tokens": 0,
             "sample_temperature": 1.0, "sample_top_k": 0},
            lambda model, rngs: model.loss({"tokens": TOKENS}, train=True, rngs=rngs)[0]),
    "transformer": ({"name": "transformer", "vocab_size": 64, "num_classes": 3, "dim": 32, "num_heads": 2,
                     "num_layers": 1, "mlp_dim": 64, "dropout": 0.1, "attention_dropout": 0.1, "positions": "learned",
                     "pooling": "mean", "max_length": 33, "pad_id": 0},
                    lambda model, rngs: model(TOKENS, train=True, rngs=rngs).sum()),
}


def _loss_of_params(name: str, policy: str):
  """(loss(params), params) of the model `name` under `policy`, dropout on with a fixed key."""
  spec, loss = MODELS_AND_LOSSES[name]
  model = remat.configure(MODELS.get(name)(ml_collections.ConfigDict(spec), TOKENS, nnx.Rngs(0)), policy)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return (lambda p: loss(nnx.merge(graphdef, p, rest, copy=True), nnx.Rngs(dropout=jax.random.key(1)))), params


@pytest.mark.parametrize("name", sorted(MODELS_AND_LOSSES))
def test_every_policy_gives_the_same_loss_and_gradients_and_keeps_less(name):
  results = {}
  for policy in remat.POLICIES:
    loss_fn, params = _loss_of_params(name, policy)
    value, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    residuals = jax.eval_shape(lambda p, f=loss_fn: jax.tree.leaves(jax.vjp(f, p)[1]), params)  # backward keeps
    results[policy] = (float(value), jax.device_get(grads), sum(r.size * r.dtype.itemsize for r in residuals))
  value, grads, kept = results["none"]
  for policy in ("full", "dots"):
    np.testing.assert_allclose(results[policy][0], value, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), results[policy][1], grads)
  assert results["full"][2] < results["dots"][2] < kept, {p: r[2] for p, r in results.items()}


def test_an_unknown_policy_is_one_config_error():
  config = config_lib.defaults()
  config.data.name, config.model.name, config.remat = "mnist", "mlp", "half"
  with pytest.raises(ConfigError, match=r"remat='half'; choose one of none, full, dots"):
    validate.check(config)
