"""TrainState: the one pytree that is jitted, sharded and checkpointed."""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx


@flax.struct.dataclass
class TrainState:
  step: jax.Array          # int32 scalar: number of updates applied.
  params: nnx.State        # the model's nnx.Param variables.
  opt_state: optax.OptState
  model_state: nnx.State   # every other variable (e.g. BatchNorm statistics); may be empty.
  rng: jax.Array           # base key; step s uses fold_in(rng, s).
  skipped_steps: jax.Array  # int32: updates skipped because the loss or gradient was not finite.


def create(model: nnx.Module, tx: optax.GradientTransformation, seed: int) -> tuple[nnx.GraphDef, TrainState]:
  """Splits `model` into a static graphdef and a TrainState at step 0."""
  graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                     model_state=model_state, rng=jax.random.PRNGKey(seed),
                     skipped_steps=jnp.zeros((), jnp.int32))
  return graphdef, state
