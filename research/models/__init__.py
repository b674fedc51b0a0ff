"""Model families as Flax NNX modules, registered by name in `research.registry.MODELS`.

A registry entry builds a model from `config.model`, one sample input batch
(after preprocessing) and an `nnx.Rngs`. The train loop knows a model only
through this interface:

- `model(x, train=bool, rngs=nnx.Rngs | None)` returns logits. Without a `loss`
  method the model is a classifier of `batch[config.data.input_key]` trained
  with softmax cross-entropy on `batch["label"]`.
- optional `loss(batch, *, train, rngs) -> (mean loss, sums)`: the model's own
  objective (language models, VAEs). `sums` are per-batch sums with a `count`
  key, added across batches and devices (see research/metrics.py); eval
  batches carry a float `mask` of real rows.
- optional `summarize(sums) -> dict[str, float]`: turns summed eval metrics
  into reported ones (default `research.metrics.summarize`).
- optional `summaries(batch, rng) -> {tag: str | float[H, W, C] image}`: logged to
  TensorBoard at each evaluation (generated text, reconstructions), given 16
  fixed preprocessed test examples as numpy arrays.
"""

from research.models import mlp  # noqa: F401  (registers "mlp")
from research.models import rnn, transformer  # noqa: F401  (registers "rnn", "transformer")
from research.models import cnn, resnet  # noqa: F401  (registers "cnn", "resnet")
from research.models import gpt, vae  # noqa: F401  (registers "gpt", "vae")
