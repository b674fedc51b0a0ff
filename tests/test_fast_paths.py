"""The fast formulations (research/models/layers/fast_paths.py) equal the reference ones.

Each fast path is checked against an independent reference: flax's own
`nnx.BatchNorm` and `nnx.max_pool`, and the library's reference formulation
(`config.fast_paths=False`) for whole train steps of the CNN and the ResNet.
"""

import json
import os
import subprocess
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from research import config as config_lib
from research.models.layers import fast_paths
from research.models.layers.attention_core import dot_product_attention
from research.models.layers.norm import BatchNorm
from research.models.layers.reductions import batch_sum, batch_sums
from research.models.layers.pooling import max_pool
from research.train.loop import train
from research.train.step import global_norm
from tests import helpers


def _images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("window", [2, 3, (2, 3)])
def test_max_pool_equals_flax_reduce_window_forward_and_backward(fast, window):
  x = _images((3, 13, 12, 5))
  ours = lambda x: max_pool(x, window, fast=fast)
  flax_pool = lambda x: nnx.max_pool(x, window_shape=(window, window) if isinstance(window, int) else window,
                                     strides=(window, window) if isinstance(window, int) else window)
  np.testing.assert_array_equal(ours(x), flax_pool(x))  # a max is exact
  weights = _images(ours(x).shape, seed=1)  # a non-uniform cotangent
  loss = lambda pool: lambda x: jnp.sum(pool(x) * weights)
  np.testing.assert_allclose(jax.grad(loss(ours))(x), jax.grad(loss(flax_pool))(x), atol=1e-6)


def test_max_pool_shares_the_gradient_of_tied_maxima():
  x = jnp.zeros((1, 2, 2, 1))  # four tied maxima in one window
  grad = jax.grad(lambda x: jnp.sum(max_pool(x, 2)))(x)
  assert float(jnp.sum(grad)) == pytest.approx(1.0)  # the whole gradient, shared (a valid subgradient)
  x = jnp.asarray([3.0, 3.0, 1.0, 0.0]).reshape(1, 2, 2, 1)  # two tied maxima: half each, as for jnp.max
  grad = jax.grad(lambda x: jnp.sum(max_pool(x, 2)))(x)
  np.testing.assert_array_equal(np.asarray(grad).ravel(), [0.5, 0.5, 0.0, 0.0])


def _numpy_attention(q, k, v, mask):
  """softmax(q k^T / sqrt(d)) v in float64, masked keys weighted 0 (a row with none left: uniform, as in jax)."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  if mask is not None:
    logits = np.where(np.broadcast_to(mask, logits.shape), logits, -1e300)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  return np.einsum("bhqk,bkhd->bqhd", weights / weights.sum(-1, keepdims=True), v)


_PADDING = np.random.default_rng(3).random((3, 1, 1, 9)) > 0.3
_PADDING[0] = False  # a sequence with no real token at all


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("mask", [None, _PADDING, np.tril(np.ones((9, 9), bool))], ids=["none", "padding", "causal"])
def test_attention_equals_float64_numpy_and_the_reference_gradients(fast, mask):
  q, k, v = (_images((3, 9, 2, 4), seed=s) * 2.0 for s in range(3))
  weights = _images((3, 9, 2, 4), seed=5)  # a non-uniform cotangent
  mask = None if mask is None else jnp.asarray(mask)
  out = jax.jit(partial(dot_product_attention, fast=fast))(q, k, v, mask)
  np.testing.assert_allclose(out, _numpy_attention(q, k, v, mask), rtol=1e-5, atol=1e-5)
  loss = lambda fast: lambda q, k, v: jnp.sum(dot_product_attention(q, k, v, mask, fast=fast) * weights)
  grads = jax.jit(jax.grad(loss(fast), argnums=(0, 1, 2)))(q, k, v)
  want = jax.jit(jax.grad(loss(False), argnums=(0, 1, 2)))(q, k, v)  # JAX's autodiff of the textbook formula
  for got, expected in zip(grads, want):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  if mask is not None and mask.shape[0] == 3:  # no gradient reaches q or k through a fully masked row
    assert float(jnp.max(jnp.abs(grads[0][0]))) == 0.0 and float(jnp.max(jnp.abs(grads[1][0]))) == 0.0


@pytest.mark.parametrize("fast", [True, False])
def test_is_causal_equals_the_causal_mask_and_combines_with_padding(fast):
  q, k, v = (_images((3, 9, 2, 4), seed=s) for s in range(3))
  causal = jnp.tril(jnp.ones((9, 9), bool))
  padding = jnp.asarray(_PADDING)
  np.testing.assert_array_equal(dot_product_attention(q, k, v, is_causal=True, fast=fast),
                                dot_product_attention(q, k, v, causal, fast=fast))
  np.testing.assert_allclose(dot_product_attention(q, k, v, padding, is_causal=True, fast=fast),
                             _numpy_attention(q, k, v, np.asarray(padding & causal)), rtol=1e-5, atol=1e-5)


def test_attention_dropout_draws_the_reference_mask_and_gradients():
  q, k, v = (_images((2, 6, 2, 4), seed=s) for s in range(3))
  weights = _images((2, 6, 2, 4), seed=5)
  dropout = lambda w: nnx.Dropout(0.5)(w, rngs=nnx.Rngs(dropout=7))  # the same key in both formulations
  loss = lambda fast: lambda q, k, v: jnp.sum(dot_product_attention(q, k, v, None, dropout, fast=fast) * weights)
  value, grads = jax.jit(jax.value_and_grad(loss(True), argnums=(0, 1, 2)))(q, k, v)
  want_value, want_grads = jax.jit(jax.value_and_grad(loss(False), argnums=(0, 1, 2)))(q, k, v)
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  assert float(value) != pytest.approx(float(jnp.sum(dot_product_attention(q, k, v) * weights)), rel=1e-3)  # dropped
  for got, expected in zip(grads, want_grads):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_batch_sum_equals_jnp_sum():
  x = _images((7, 9, 11, 5)) * 4.0 + 2.0
  np.testing.assert_allclose(jax.jit(batch_sum)(x), jnp.sum(x, (0, 1, 2)), rtol=1e-5)


@pytest.mark.parametrize("shape", [(128, 14, 14, 8), (4, 6, 5), (2, 3, 4), (7, 9, 11, 5), (3,)])
def test_batch_sums_equal_float64_sums(shape):
  """Row counts that take blocks of 16, 8 and 2 rows, none (odd) and a vector."""
  x = _images(shape) * 4.0 + 2.0
  total, squares = jax.jit(lambda x: batch_sums(x, jnp.square(x)))(x)
  rows = np.asarray(x, np.float64).reshape(-1, shape[-1])
  np.testing.assert_allclose(total, rows.sum(0), rtol=2e-6, atol=1e-3)
  np.testing.assert_allclose(squares, np.square(rows).sum(0), rtol=2e-6)


def test_batch_sums_of_bfloat16_are_bfloat16_and_within_its_rounding():
  x = (_images((64, 8)) + 100.0).astype(jnp.bfloat16)
  total, squares = jax.jit(lambda x: batch_sums(x, x * x))(x)
  assert total.dtype == squares.dtype == jnp.bfloat16
  rows = np.asarray(x, np.float64)
  np.testing.assert_allclose(np.float32(total), rows.sum(0), rtol=8e-3)
  np.testing.assert_allclose(np.float32(squares), np.square(rows).sum(0), rtol=8e-3)


def test_gradient_norm_equals_optax_global_norm():
  tree = {"scalar": jnp.float32(-3.0), "bias": _images((5,)), "kernel": _images((7, 5), seed=1),
          "conv": [_images((3, 3, 2, 4), seed=2)], "empty": jnp.zeros((3, 0))}
  np.testing.assert_allclose(jax.jit(global_norm)(tree), optax.global_norm(tree), rtol=1e-6)
  for bad in (np.inf, -np.inf, np.nan):  # the NaN guard relies on one non-finite element making it non-finite
    kernel = tree["kernel"].at[3, 2].set(bad)
    assert not np.isfinite(float(jax.jit(global_norm)({**tree, "kernel": kernel})))


@pytest.mark.parametrize("fast", [True, False])
def test_batch_norm_train_mode_equals_flax_outputs_gradients_and_running_averages(fast):
  x = _images((16, 5, 5, 6)) * 3.0 + 1.5
  ours = BatchNorm(6, momentum=0.8, rngs=nnx.Rngs(0))
  ours.fast_paths = fast
  reference = nnx.BatchNorm(6, momentum=0.8, rngs=nnx.Rngs(0))
  for bn in (ours, reference):  # non-trivial scale and bias
    bn.scale[...] = jnp.linspace(0.5, 2.0, 6)
    bn.bias[...] = jnp.linspace(-1.0, 1.0, 6)
  weights = _images(x.shape, seed=2)

  def loss(bn, x):
    return jnp.sum(jnp.tanh(bn(x, use_running_average=False)) * weights)

  results = {}
  for name, bn in (("ours", ours), ("reference", reference)):
    value, (grad_bn, grad_x) = nnx.value_and_grad(loss, argnums=(0, 1))(bn, x)
    results[name] = (value, grad_x, grad_bn["scale"][...], grad_bn["bias"][...], bn.mean[...], bn.var[...])
  for got, want in zip(results["ours"], results["reference"]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert float(jnp.max(jnp.abs(results["ours"][4]))) > 0.1  # the running mean moved
  np.testing.assert_allclose(ours(x, use_running_average=True), reference(x, use_running_average=True),
                             rtol=1e-5, atol=1e-5)  # eval mode reads the running averages, equal within rounding


@pytest.mark.parametrize("config_name", ["mnist_cnn", "fashion_mnist_resnet", "rotten_tomatoes_transformer",
                                         "shakespeare_gpt"])
def test_train_steps_with_and_without_fast_paths_agree(config_name):
  """Three real train steps of a zoo model (8 devices): the same loss and parameters with either formulation.
  The Transformer trains with its config's dropout, attention dropout included."""
  from research import parallel
  from research.train import experiment
  from research.train.step import make_steps, named

  config = config_lib.load(f"configs/{config_name}.py:smoke")
  config.data.augment = ""
  config.optimizer.update(name="sgd", learning_rate=0.1, weight_decay=0.0)  # parameters differ as the gradients do
  config.schedule.update(name="constant", warmup_steps=0)  # (a warm-up from 0 would hide differences)
  batch = helpers.zoo_batch(config_name, config, np.random.default_rng(0))
  input_key = config.data.input_key
  outcomes = []
  for fast in (True, False):
    config.fast_paths = fast
    mesh = parallel.make_mesh(config)
    model = experiment.build_model(config, batch, lambda b: b)
    graphdef, state, tx, _ = experiment.build_state(config, model, 10, mesh)
    train_step, _ = make_steps(graphdef, tx, mesh, strategy="auto", input_key=input_key)
    losses = []
    for _ in range(3):
      state, metrics = train_step(state, batch)
      losses.append(named(metrics)["loss"])
    outcomes.append((losses, jax.device_get(state.params), jax.device_get(state.model_state)))
  (fast_losses, fast_params, fast_stats), (ref_losses, ref_params, ref_stats) = outcomes
  np.testing.assert_allclose(fast_losses, ref_losses, rtol=1e-5)
  assert fast_losses[2] != fast_losses[0]  # the steps trained
  for got, want in zip(jax.tree.leaves(fast_params) + jax.tree.leaves(fast_stats),
                       jax.tree.leaves(ref_params) + jax.tree.leaves(ref_stats)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_xla_profiles_are_added_unless_set_or_switched_off():
  from research import xla_flags

  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  xla_flags.apply(env)
  assert env["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=8 "
                              "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-reduce")
  mine = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
  xla_flags.apply(mine)
  assert mine["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"  # the user's value wins
  for off in ({"RESEARCH_XLA_DEFAULTS": "off"}, {"RESEARCH_XLA_DEFAULTS": "0"}):
    xla_flags.apply(off)
    assert "XLA_FLAGS" not in off
  with pytest.raises(ValueError, match="RESEARCH_XLA_DEFAULTS='fast'; choose one of default, fused_reductions, off"):
    xla_flags.apply({"RESEARCH_XLA_DEFAULTS": "fast"})


def test_applying_again_or_in_a_child_process_replaces_the_added_flags_but_keeps_yours():
  from research import xla_flags

  parent = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  xla_flags.apply(parent)  # default
  child = {**parent, "RESEARCH_XLA_DEFAULTS": "fused_reductions"}
  xla_flags.apply(child)
  assert child["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=8 "
                                "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution")
  xla_flags.apply(child, profile_name="off")  # e.g. scripts/train.py with --config.xla_profile=off
  assert child["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"
  yours = {**parent, "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
  xla_flags.apply(yours, profile_name="fused_reductions")  # a child given its own XLA_FLAGS keeps them
  assert yours["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"


_USE_PROFILE = """
import json, os
from research import xla_flags
before = xla_flags.use("fused_reductions")  # JAX's backend has not started: applied
flags = os.environ["XLA_FLAGS"]
import jax
jax.devices()
print(json.dumps([before, flags, xla_flags.use("fused_reductions"), xla_flags.use("default")]))
"""


def test_the_training_loop_applies_its_profile_before_jax_starts_and_warns_after():
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "RESEARCH_XLA_ADDED")}
  done = subprocess.run([sys.executable, "-c", _USE_PROFILE], capture_output=True, text=True, timeout=300,
                        cwd=str(helpers.ROOT), env=env)
  before, flags, same, other = json.loads(done.stdout.splitlines()[-1])
  assert before is None and flags == "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
  assert same is None  # already in effect
  assert "config.xla_profile='default' is not in effect" in other and "apply(profile_name='default')" in other


def test_training_in_a_process_with_another_profile_warns(tmp_path, capsys):
  from research import xla_flags

  current = xla_flags.profile()  # this test process's (conftest.py applies it before JAX starts)
  config = config_lib.load("configs/mnist_mlp.py:smoke")
  config.train.update(dict(steps=2, log_every=1, eval_every=0))
  config.xla_profile = other = "fused_reductions" if current != "fused_reductions" else "default"
  train(config, tmp_path / "other")
  assert f"apply(profile_name={other!r}) before JAX starts" in capsys.readouterr().err
  config.xla_profile = current
  train(config, tmp_path / "same")
  assert "is not in effect" not in capsys.readouterr().err


# scripts/train.py's command, with the training itself replaced by a print of the XLA_FLAGS it would run with.
_TRAIN_FLAGS = """
import os, sys
from research import cli
from research.train import loop
loop.train = lambda config, workdir, *guard: print(os.environ["XLA_FLAGS"])
sys.exit(cli.main("train", sys.argv[1:]))
"""


def test_the_train_command_applies_the_configs_xla_profile(tmp_path):
  def flags(*overrides):
    done = subprocess.run([sys.executable, "-c", _TRAIN_FLAGS, "--config", "configs/rotten_tomatoes_transformer.py",
                           "--workdir", str(tmp_path), *overrides], capture_output=True, text=True, timeout=300,
                          cwd=str(helpers.ROOT))
    return done.returncode, done.stdout.split()[-1:], done.stderr

  assert flags()[:2] == (0, ["--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"])
  assert flags("--config.xla_profile=default")[:2] == (
      0, ["--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,-reduce"])
  code, _, err = flags("--config.xla_profile=fastest")
  assert code == 2 and "xla_profile='fastest'; choose one of default, fused_reductions, off" in err


# Gradients of a convolution (the `individual_convolution` fusions) and of a LayerNorm between matmuls and GELUs
# (the `reduce` fusions), computed in a process started with the given XLA profile.
_GRADS = """
import json, os, sys
from research import xla_flags
xla_flags.apply()
import jax, jax.numpy as jnp, numpy as np
rng = np.random.default_rng(0)
x, k = rng.standard_normal((16, 14, 14, 8), np.float32), rng.standard_normal((3, 3, 8, 16), np.float32)
conv = lambda x, k: jnp.sum(jnp.tanh(jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))))
h, w1, w2 = (rng.standard_normal(s, np.float32) / 8 for s in ((512, 64), (64, 64), (64, 128)))
def layer_norm_block(h, w1, w2):
  h = h @ w1
  mu = h.mean(-1, keepdims=True)
  y = (h - mu) / jnp.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + 1e-6)
  return jnp.sum(jax.nn.gelu(y @ w2) ** 2)
grads = jax.jit(jax.grad(conv, argnums=(0, 1)))(x, k) + jax.jit(jax.grad(layer_norm_block, argnums=(0, 1, 2)))(h, w1, w2)
print(json.dumps({"flags": os.environ.get("XLA_FLAGS", ""), "grads": [np.asarray(g).ravel().tolist() for g in grads]}))
"""


def test_gradients_are_equal_under_every_xla_profile():
  results = {}
  for profile in ("default", "fused_reductions", "off"):
    env = {**os.environ, "RESEARCH_XLA_DEFAULTS": profile}  # XLA_FLAGS as conftest's xla_flags.apply() left it
    done = subprocess.run([sys.executable, "-c", _GRADS], capture_output=True, text=True, env=env, timeout=300,
                          cwd=str(helpers.ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
    results[profile] = json.loads(done.stdout.strip().splitlines()[-1])
  assert "ynn_fusion_type=-individual_convolution,-reduce" in results["default"]["flags"]
  assert "ynn_fusion_type=-individual_convolution" in results["fused_reductions"]["flags"]
  assert "-reduce" not in results["fused_reductions"]["flags"]
  assert "ynn_fusion_type" not in results["off"]["flags"]
  for profile in ("fused_reductions", "off"):
    for got, want in zip(results[profile]["grads"], results["default"]["grads"]):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_two_models_with_different_fast_paths_trace_each_their_own_formulation():
  """The setting belongs to each model: both models live in one process, and each traces its own formulation
  (the fast max-pool and BatchNorm backward have custom VJPs, the reference ones do not)."""
  from research.models.cnn import CNN

  x = _images((4, 12, 12, 1))
  fast, reference = (fast_paths.configure(CNN((12, 12, 1), 10, channels=(4,), hidden_size=8, dropout=0.0,
                                                     rngs=nnx.Rngs(0)), f)
                     for f in (True, False))
  assert fast_paths.enabled(fast) == [True, True] and fast_paths.enabled(reference) == [False, False]

  def grad_jaxpr(model):
    graphdef, state = nnx.split(model)
    loss = lambda state: jnp.sum(nnx.merge(graphdef, state)(x, train=True))
    return str(jax.make_jaxpr(jax.grad(loss))(state))

  assert "custom_vjp" in grad_jaxpr(fast) and "custom_vjp" not in grad_jaxpr(reference)
  assert fast_paths.enabled(fast) == [True, True]  # tracing the other changed nothing
  grads = [nnx.grad(lambda m: jnp.sum(m(x, train=True)))(m) for m in (fast, reference)]
  for got, want in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
