import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import config as config_lib
from research import optim
from research.errors import ConfigError


def _config(**optimizer):
  config = config_lib.load("configs/mnist_mlp.py")
  config.schedule.name = "constant"
  config.optimizer.update(optimizer)
  return config


PARAMS = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array([0.5])}
GRADS = {"w": jnp.array([0.1, 0.2, -0.3]), "b": jnp.array([1.0])}


@pytest.mark.parametrize("name, reference", [
    ("sgd", optax.sgd(0.1)),
    ("momentum", optax.sgd(0.1, momentum=0.9)),
    ("nesterov", optax.sgd(0.1, momentum=0.9, nesterov=True)),
    ("adagrad", optax.adagrad(0.1, eps=1e-7)),
    ("rmsprop", optax.rmsprop(0.1, decay=0.9, eps=1e-8, momentum=0.9)),
    ("adam", optax.adam(0.1)),
    ("adamw", optax.adamw(0.1, weight_decay=0.0)),
])
def test_each_optimizer_matches_optax_over_three_updates(name, reference):
  tx, _ = optim.build(_config(name=name, learning_rate=0.1), total_steps=10)
  ours, theirs = PARAMS, PARAMS
  ours_state, theirs_state = tx.init(PARAMS), reference.init(PARAMS)
  for _ in range(3):
    u, ours_state = tx.update(GRADS, ours_state, ours)
    ours = optax.apply_updates(ours, u)
    v, theirs_state = reference.update(GRADS, theirs_state, theirs)
    theirs = optax.apply_updates(theirs, v)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, theirs)


def test_clipping_and_weight_decay():
  tx, _ = optim.build(_config(name="sgd", learning_rate=1.0, clip_norm=0.1, weight_decay=0.0), 10)
  updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
  assert float(optax.tree.norm(updates)) == pytest.approx(0.1, rel=1e-5)

  tx, _ = optim.build(_config(name="sgd", learning_rate=1.0, weight_decay=0.5), 10)
  updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)  # sgd: update = -(g + wd * p)
  np.testing.assert_allclose(updates["w"], -(GRADS["w"] + 0.5 * PARAMS["w"]), rtol=1e-6)

  tx, _ = optim.build(_config(name="adamw", learning_rate=1.0, weight_decay=0.5), 10)
  updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)  # adamw: decoupled, first step adam ~ -sign(g)
  np.testing.assert_allclose(updates["w"], -(np.sign(GRADS["w"]) + 0.5 * PARAMS["w"]), atol=1e-4)


def test_schedules():
  config = _config(learning_rate=1.0)
  config.schedule.update(dict(name="warmup_cosine", warmup_steps=10, end_factor=0.1))
  lr = optim.build_schedule(config, total_steps=110)
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.5)
  assert float(lr(10)) == pytest.approx(1.0) and float(lr(60)) == pytest.approx(0.55, rel=1e-4)
  assert float(lr(110)) == pytest.approx(0.1)

  config.schedule.update(dict(name="step", boundaries=(0.5, 80), factor=0.1))
  lr = optim.build_schedule(config, total_steps=100)
  assert [float(lr(s)) for s in (0, 49, 50, 79, 80)] == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])

  config.schedule.name = "cosine_restarts"
  with pytest.raises(ConfigError, match="Unknown learning-rate schedule 'cosine_restarts'.*constant"):
    optim.build_schedule(config, 100)
  config.schedule.name = "constant"
  config.optimizer.learning_rate = 0.0
  with pytest.raises(ConfigError, match="must be positive"):
    optim.build_schedule(config, 100)
