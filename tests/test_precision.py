"""Mixed precision (`config.compute_dtype = "bfloat16"`): layers compute in bfloat16, parameters stay float32."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research import parallel
from research.errors import ConfigError
from research.models import precision
from research.train import experiment
from research.train.step import make_steps, named
from tests import helpers

CONFIGS = ["mnist_mlp", "mnist_cnn", "rotten_tomatoes_lstm", "rotten_tomatoes_transformer", "shakespeare_gpt",
           "mnist_vae"]


def _one_step(config, batch):
  """One real train step (8 devices): (loss, parameters after the step, the step's StableHLO text)."""
  mesh = parallel.make_mesh(config)
  model = precision.set_compute_dtype(experiment.build_model(config, batch, lambda b: b), config.compute_dtype)
  graphdef, state, tx, _ = experiment.build_state(config, model, 10, mesh)
  train_step, _ = make_steps(graphdef, tx, mesh, strategy="auto", input_key=config.data.input_key)
  hlo = train_step.lower(state, batch).as_text()
  state, metrics = train_step(state, batch)
  return named(metrics)["loss"], jax.device_get(state.params), hlo


@pytest.mark.parametrize("config_name", CONFIGS)
def test_bfloat16_step_computes_in_bfloat16_keeps_float32_parameters_and_the_float32_loss(config_name):
  config = config_lib.load(f"configs/{config_name}.py:smoke")
  config.data.augment = ""
  config.schedule.update(name="constant", warmup_steps=0)  # the step moves the parameters
  batch = helpers.zoo_batch(config_name, config, np.random.default_rng(0))
  results = {}
  for dtype in ("float32", "bfloat16"):
    config.compute_dtype = dtype
    results[dtype] = _one_step(config, batch)
  (loss32, params32, hlo32), (loss16, params16, hlo16) = results["float32"], results["bfloat16"]
  matmul = re.compile(r"(dot_general|convolution).*\(tensor<[0-9x]*bf16>")  # a product of bfloat16 operands
  assert not matmul.search(hlo32)
  assert matmul.search(hlo16), "no bfloat16 matrix product in the mixed-precision step"
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params16))  # parameters and their update
  assert np.isfinite(loss16) and loss16 == pytest.approx(loss32, rel=3e-2)  # bfloat16 keeps ~3 digits
  moved = [np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(params16), jax.tree.leaves(params32))]
  assert max(moved) > 0  # the bfloat16 step is not the float32 step


def test_an_unknown_compute_dtype_names_the_choices():
  from research.train import loop

  config = config_lib.load("configs/mnist_mlp.py:smoke")
  config.compute_dtype = "float16"
  with pytest.raises(ConfigError, match="compute_dtype='float16'; choose one of float32, bfloat16"):
    loop.check(config)


def test_layers_get_the_compute_dtype_and_keep_float32_parameters():
  from flax import nnx

  config = config_lib.load("configs/rotten_tomatoes_transformer.py:smoke")
  model = experiment.build_model(config, helpers.zoo_batch("rotten_tomatoes_transformer", config,
                                                           np.random.default_rng(0)), lambda b: b)
  precision.set_compute_dtype(model, "bfloat16")
  layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, (nnx.Linear, nnx.LayerNorm, nnx.Embed))]
  assert layers and all(m.dtype == jnp.bfloat16 and m.param_dtype == jnp.float32 for m in layers)
  tokens = jnp.asarray(helpers.zoo_batch("rotten_tomatoes_transformer", config, np.random.default_rng(1))["tokens"])
  assert model(tokens).dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  precision.set_compute_dtype(model, "float32")
  assert model(tokens).dtype == jnp.float32
