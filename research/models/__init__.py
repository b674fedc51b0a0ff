"""Model families as Flax NNX modules, registered by name in `research.registry.MODELS`.

A model is called as `model(x, train=bool, rngs=nnx.Rngs | None)` and returns logits.
A registry entry builds it from `config.model`, one sample input batch and an `nnx.Rngs`.
"""

from research.models import mlp  # noqa: F401  (registers "mlp")
