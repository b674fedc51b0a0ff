"""Gradient accumulation: one step's batch run as `config.train.grad_accum_steps` microbatches under `lax.scan`.

Only one microbatch's activations are alive at a time, so the compiled step needs less memory, and the update
is the large batch's: each microbatch's gradient and loss are weighted by its share of the batch's `count`
(real examples, or target tokens for a language model; rows where `mask` is 0 do not count), which makes the
weighted sum equal to the gradient of the whole batch's mean loss. Model state such as BatchNorm's running
statistics is threaded through the microbatches in order: its batch statistics are each microbatch's own.

Microbatches are split from each device's rows (row j * k + i of the batch goes to microbatch i), so a batch
sharded over the data axis stays sharded the same way in every microbatch and no rows move between devices.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from research.errors import ConfigError


def check(batch_size: int, data_devices: int, steps: int) -> None:
  """A ConfigError unless `steps` microbatches divide each device's share of the batch."""
  per_device = batch_size // data_devices
  if steps < 1 or per_device % steps:
    divisors = [d for d in range(1, per_device + 1) if per_device % d == 0]
    raise ConfigError(f"train.grad_accum_steps={steps} does not divide the per-device batch of {per_device} "
                      f"(data.batch_size={batch_size} over {data_devices} devices); choose one of "
                      f"{', '.join(map(str, divisors))}, or change data.batch_size.")


def split(batch: dict, steps: int) -> dict:
  """{key: [B, ...]} -> {key: [steps, B / steps, ...]}, microbatch i holding rows i, i + steps, i + 2 steps, ..."""
  def one(x):
    micro = x.reshape(x.shape[0] // steps, steps, *x.shape[1:])
    return jnp.swapaxes(micro, 0, 1)
  return jax.tree.map(one, batch)


def accumulate(loss_and_grads: Callable, params, model_state, batch: dict, rng, steps: int):
  """The batch's (loss, grads, model_state) from `loss_and_grads(params, model_state, microbatch, rng) ->
  ((loss, (count, model_state)), grads)` run over `steps` microbatches; `steps == 1` calls it once."""
  if steps == 1:
    (loss, (_, model_state)), grads = loss_and_grads(params, model_state, batch, rng)
    return loss, grads, model_state

  def body(carry, micro):
    grad_sum, loss_sum, count_sum, state, index = carry
    (loss, (count, state)), grads = loss_and_grads(params, state, micro, jax.random.fold_in(rng, index))
    grad_sum = jax.tree.map(lambda s, g: s + count * g.astype(s.dtype), grad_sum, grads)
    return (grad_sum, loss_sum + count * loss, count_sum + count, state, index + 1), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.result_type(p.dtype, jnp.float32)), params)
  init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), model_state, jnp.zeros((), jnp.int32))
  (grad_sum, loss_sum, count_sum, model_state, _), _ = jax.lax.scan(body, init, split(batch, steps))
  total = jnp.maximum(count_sum, 1.0)
  grads = jax.tree.map(lambda s, p: (s / total).astype(p.dtype), grad_sum, params)
  return loss_sum / total, grads, model_state
