"""Model families as Flax NNX modules, registered by name in `research.registry.MODELS`.

A registry entry builds a model from `config.model`, one sample input batch
(after preprocessing) and an `nnx.Rngs`. The train loop knows a model only
through the interface of research/models/interface.py: `model(x, train=bool, rngs=...)`
returns logits, and a model may declare the optional abilities `loss`,
`summarize`, `summaries` and `export_fn` there; `abilities(model)` tells which.
"""

from research.models import mlp  # noqa: F401  (registers "mlp")
from research.models import rnn, transformer  # noqa: F401  (registers "rnn", "transformer")
from research.models import cnn, resnet  # noqa: F401  (registers "cnn", "resnet")
from research.models import gpt, vae  # noqa: F401  (registers "gpt", "vae")
