"""The one interface through which training, evaluation and export know a model.

Every model is called as `model(x, train=bool, rngs=nnx.Rngs | None)` and returns logits. Beyond that a model may
declare optional abilities, by defining these methods on its class:

- `loss(batch, *, train, rngs) -> (mean loss, sums)`: the model's own objective (language models, VAEs).
  `sums` are per-batch sums with a `count` key, added across batches and devices (research/metrics.py);
  eval batches carry a float `mask` of real rows. Without it the model is a classifier of
  `batch[config.data.input_key]`, trained with softmax cross-entropy on `batch["label"]`.
- `summarize(sums) -> dict[str, float]`: summed eval metrics -> reported ones (default
  `research.metrics.summarize`).
- `summaries(batch, rng) -> {tag: str or float[H, W, C] image}`: logged to TensorBoard at each evaluation
  (generated text, reconstructions), given 16 fixed preprocessed test examples as numpy arrays.
- `export_fn(batch) -> (fn, inputs[, output_names])`: what research/export deploys, `fn(model, *inputs)`
  (default `model(x, train=False)`).

`abilities(model)` answers which of them a model declares. Only methods of the class count: an attribute of an
instance that happens to share a name (a submodule called `loss`) is not an ability.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from research import metrics

ABILITIES = ("loss", "summarize", "summaries", "export_fn")


@dataclasses.dataclass(frozen=True)
class Abilities:
  """A model's optional abilities as bound methods; None where it declares none (see the table above)."""
  loss: Callable | None
  summarize: Callable  # research.metrics.summarize unless the model has its own
  summaries: Callable | None
  export_fn: Callable | None


def abilities(model) -> Abilities:
  """The optional abilities `model` declares (methods of its class named in ABILITIES)."""
  found = {name: getattr(model, name) if callable(getattr(type(model), name, None)) else None for name in ABILITIES}
  found["summarize"] = found["summarize"] or metrics.summarize
  return Abilities(**found)
