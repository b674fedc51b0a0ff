"""Optimizers and learning-rate schedules from `config.optimizer` / `config.schedule`.

    config.optimizer = dict(name="adamw", learning_rate=1e-3, weight_decay=1e-4,
                            clip_norm=1.0, momentum=0.9, b1=0.9, b2=0.999, eps=1e-8)
    config.schedule = dict(name="warmup_cosine", warmup_steps=500, end_factor=0.0,
                           boundaries=(), factor=0.1)

Each optimizer takes only the fields it understands; `clip_norm > 0` prepends
global-norm clipping. `weight_decay` is decoupled (AdamW-style) for adamw and
added to the gradient (L2) for every other optimizer.
"""

from __future__ import annotations

import optax

from research import prune
from research.errors import ConfigError
from research.registry import OPTIMIZERS, SCHEDULES


@SCHEDULES.register("constant")
def constant(base_lr: float, total_steps: int, cfg) -> optax.Schedule:
  del total_steps, cfg
  return optax.constant_schedule(base_lr)


@SCHEDULES.register("warmup_cosine")
def warmup_cosine(base_lr: float, total_steps: int, cfg) -> optax.Schedule:
  """Linear warmup from 0 over `warmup_steps`, then cosine decay to `end_factor * base_lr`."""
  warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(0.0, base_lr, warmup, max(total_steps, warmup + 1),
                                            end_value=base_lr * cfg.end_factor)


@SCHEDULES.register("step")
def step_decay(base_lr: float, total_steps: int, cfg) -> optax.Schedule:
  """Multiplies the rate by `factor` at each step in `boundaries` (ints, or fractions of the run)."""
  factor = cfg.factor
  steps = [int(b * total_steps) if 0 < b < 1 else int(b) for b in cfg.boundaries]
  return optax.piecewise_constant_schedule(base_lr, {s: factor for s in steps})


OPTIMIZERS.register("sgd")(lambda lr, cfg: optax.sgd(lr))
OPTIMIZERS.register("momentum")(lambda lr, cfg: optax.sgd(lr, momentum=cfg.momentum))
OPTIMIZERS.register("nesterov")(lambda lr, cfg: optax.sgd(lr, momentum=cfg.momentum, nesterov=True))
OPTIMIZERS.register("adagrad")(lambda lr, cfg: optax.adagrad(lr, eps=cfg.eps))
OPTIMIZERS.register("rmsprop")(
    lambda lr, cfg: optax.rmsprop(lr, decay=cfg.decay, eps=cfg.eps,
                                  momentum=cfg.momentum or None))
OPTIMIZERS.register("adam")(
    lambda lr, cfg: optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
OPTIMIZERS.register("adamw")(
    lambda lr, cfg: optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                                weight_decay=cfg.weight_decay))


def build_schedule(config, total_steps: int) -> optax.Schedule:
  lr = config.optimizer.learning_rate
  if not lr > 0:
    raise ConfigError(f"optimizer.learning_rate must be positive, got {lr}.")
  return SCHEDULES.get(config.schedule.name)(lr, total_steps, config.schedule)


def build(config, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, learning-rate schedule) for `config.optimizer` and `config.schedule`."""
  cfg = config.optimizer
  make = OPTIMIZERS.get(cfg.name)
  schedule = build_schedule(config, total_steps)
  parts = []
  if cfg.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(cfg.clip_norm))
  if cfg.weight_decay > 0 and cfg.name != "adamw":
    parts.append(optax.add_decayed_weights(cfg.weight_decay))
  parts.append(make(schedule, cfg))
  pruning = prune.from_config(config)  # config.prune.sparsity > 0: global magnitude pruning, last in the chain
  if pruning is not None:
    parts.append(pruning)
  return optax.chain(*parts), schedule
