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
from research.models.layers import bf16_matmul
from research.train import experiment
from research.train.step import make_steps, named
from tests import helpers

CONFIGS = ["mnist_mlp", "mnist_cnn", "rotten_tomatoes_lstm", "rotten_tomatoes_transformer", "shakespeare_gpt",
           "mnist_vae"]


def _one_step(config, batch, recipe):
  """One real train step (8 devices): (loss, parameters after the step, the step's StableHLO text)."""
  mesh = parallel.make_mesh(config)
  model = precision.set_compute_dtype(experiment.build_model(config, batch, lambda b: b), config.compute_dtype,
                                      recipe)
  graphdef, state, tx, _ = experiment.build_state(config, model, 10, mesh)
  train_step, _ = make_steps(graphdef, tx, mesh, strategy="auto", input_key=config.data.input_key)
  hlo = train_step.lower(state, batch).as_text()
  state, metrics = train_step(state, batch)
  return named(metrics)["loss"], jax.device_get(state.params), hlo


# config name -> _one_step in float32, computed once: "float32" undoes either recipe, so both recipes' tests compare
# against the same model (test_matmul_operands_recipe_rounds_only_the_products_operands checks the undoing).
_FLOAT32_STEPS: dict[str, tuple] = {}


@pytest.mark.parametrize("recipe", precision.RECIPES)
@pytest.mark.parametrize("config_name", CONFIGS)
def test_bfloat16_step_computes_in_bfloat16_keeps_float32_parameters_and_the_float32_loss(config_name, recipe):
  config = config_lib.load(f"configs/{config_name}.py:smoke")
  config.data.augment = ""
  config.schedule.update(name="constant", warmup_steps=0)  # the step moves the parameters
  batch = helpers.zoo_batch(config_name, config, np.random.default_rng(0))
  config.compute_dtype = "float32"
  if config_name not in _FLOAT32_STEPS:
    _FLOAT32_STEPS[config_name] = _one_step(config, batch, recipe)
  loss32, params32, hlo32 = _FLOAT32_STEPS[config_name]
  config.compute_dtype = "bfloat16"
  loss16, params16, hlo16 = _one_step(config, batch, recipe)
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
  precision.set_compute_dtype(model, "bfloat16", "activations")
  layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, (nnx.Linear, nnx.LayerNorm, nnx.Embed))]
  assert layers and all(m.dtype == jnp.bfloat16 and m.param_dtype == jnp.float32 for m in layers)
  tokens = jnp.asarray(helpers.zoo_batch("rotten_tomatoes_transformer", config, np.random.default_rng(1))["tokens"])
  assert model(tokens).dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  precision.set_compute_dtype(model, "float32", "activations")
  assert model(tokens).dtype == jnp.float32


def test_matmul_operands_recipe_rounds_only_the_products_operands():
  """CPU mixed precision: Linear products take bfloat16 operands, float32 results; activations stay float32."""
  from flax import nnx

  config = config_lib.load("configs/rotten_tomatoes_transformer.py:smoke")
  batch = helpers.zoo_batch("rotten_tomatoes_transformer", config, np.random.default_rng(0))
  model = experiment.build_model(config, batch, lambda b: b)
  tokens = jnp.asarray(batch["tokens"])
  reference = np.asarray(model(tokens), np.float64)
  precision.set_compute_dtype(model, "bfloat16", "matmul_operands")
  linears = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Linear)]
  assert linears and all(m.dot_general is bf16_matmul.dot_general for m in linears)
  assert all(m.dtype is None for _, m in nnx.iter_modules(model) if hasattr(m, "param_dtype"))
  mixed = model(tokens)
  assert mixed.dtype == jnp.float32
  # bfloat16 operands keep ~3 significant digits: close to float32, but not float32
  assert 0 < np.max(np.abs(np.asarray(mixed) - reference)) < 0.05 * np.max(np.abs(reference))
  precision.set_compute_dtype(model, "float32", "matmul_operands")
  assert all(m.dot_general is jax.lax.dot_general for m in linears)
  np.testing.assert_array_equal(np.asarray(model(tokens)), reference.astype(np.float32))


def test_bf16_matmul_is_the_exact_product_of_bfloat16_rounded_operands_forward_and_backward():
  import ml_dtypes

  rng = np.random.default_rng(0)
  x, g = rng.standard_normal((3, 5, 64)).astype(np.float32), rng.standard_normal((3, 5, 24)).astype(np.float32)
  kernel = rng.standard_normal((64, 24)).astype(np.float32)
  rounded = lambda a: np.asarray(a.astype(ml_dtypes.bfloat16), np.float64)  # float64 products: the reference
  linear = lambda a, b: bf16_matmul.dot_general(a, b, (((2,), (0,)), ((), ())))
  y, vjp = jax.vjp(linear, x, kernel)
  d_x, d_kernel = vjp(jnp.asarray(g))
  assert y.dtype == d_x.dtype == d_kernel.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y), rounded(x) @ rounded(kernel), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(d_x), rounded(g) @ rounded(kernel).T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(d_kernel), np.einsum("abi,abj->ij", rounded(x), rounded(g)),
                             rtol=1e-5, atol=1e-5)
  assert np.max(np.abs(np.asarray(y) - x.astype(np.float64) @ kernel)) > 1e-3  # the operands were rounded
  # All three products of the step (forward, input gradient, kernel gradient): bfloat16 in, float32 out
  hlo = jax.jit(jax.grad(lambda a, b: jnp.sum(linear(a, b) ** 2), argnums=(0, 1))).lower(x, kernel).as_text()
  shape = r"tensor<[0-9x]*(\w+)>"
  products = re.findall(rf"dot_general .*: \({shape}, {shape}\) -> {shape}", hlo)
  assert products == [("bf16", "bf16", "f32")] * 3, products


def test_bf16_matmul_rejects_products_other_than_a_linear_layers():
  a, b = jnp.ones((4, 8)), jnp.ones((4, 8))
  with pytest.raises(ValueError, match="only as a Linear layer's dot_general"):
    bf16_matmul.dot_general(a, b, (((0,), (0,)), ((), ())))
