"""`scripts/explain.py`: what a trained run's model looks at, for given inputs or misclassified test examples.

- an image classifier: integrated gradients and saliency over each image (research/explain/images.py);
- a text classifier: token attributions as HTML, TensorBoard text and JSON (research/explain/texts.py), and,
  for a Transformer, its attention maps per layer and head;
- a language model with attention (the GPT): attention maps of given texts (their UTF-8 bytes).

Everything is written under OUT (default WORKDIR/explain).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from research.errors import ConfigError
from research.explain import attention, images, texts
from research.explain import inputs as inputs_lib
from research.explain import model as model_lib
from research.explain import tokens as tokens_lib
from research.train import evaluate, experiment


def explain(workdir: str | Path, *, inputs: list[str] = (), misclassified: int = 0, step: str | int = "latest",
            out: str | Path | None = None, log=print, **options) -> list[Path]:
  """Explains the model of `workdir` at `step` for `inputs` (raw: files or texts) or the first `misclassified`
  test examples; `options` are integrated gradients' (steps, method, batch_points). Returns the paths written."""
  workdir = Path(workdir)
  if bool(inputs) == bool(misclassified):
    raise ConfigError("give either --inputs (files or texts) or --misclassified N, not both or neither.")
  config = experiment.load_config(workdir)
  resolved = evaluate.resolve_step(workdir, config, step)
  model, config, meta = experiment.trained_model(workdir, "latest" if resolved is None else resolved)
  out = Path(out) if out else workdir / "explain"
  text_model = tokens_lib.is_text_model(model)
  if hasattr(model, "loss") and not text_model:  # a model trained on its own objective: a language model, a VAE
    if not attention.attention_layers(model):
      raise ConfigError(f"{type(model).__name__} is neither a classifier nor an attention model: explain.py draws "
                        f"attributions of classifiers and attention maps of Transformers and the GPT.")
    if misclassified:
      raise ConfigError(f"{type(model).__name__} is a language model: it has no classes to misclassify; give "
                        f"--inputs TEXT ... to draw its attention maps.")
    return language_model_maps(model, inputs, out / "attention")

  clean, preprocess = inputs_lib.cleaning(config), experiment.preprocessor(config, workdir)
  prepare = lambda raw: preprocess(clean(raw))
  f, state = model_lib.pure(model)
  predict = lambda raw: model_lib.logits(f, state, np.asarray(prepare(raw)[config.data.input_key])).argmax(1)
  examples = (inputs_lib.from_arguments(config, workdir, list(inputs)) if inputs else
              inputs_lib.misclassified(config, predict, misclassified, log))
  names = evaluate.class_names(config, workdir, int(config.model.num_classes))
  step_number = int(meta["step"])
  if not text_model:
    return images.explain(model, examples, prepare, config.data.input_key, names, out, step_number, **options)
  written = texts.explain(model, examples, clean, preprocess, config, workdir, names, out, step_number, **options)
  if attention.attention_layers(model):
    tokenizer, text_key = tokens_lib.tokenizer(config, workdir)
    cleaned = clean(dict(examples.raw))
    tokens = np.asarray(preprocess(cleaned)[config.data.input_key], np.int32)
    spans = tokens_lib.spans(tokenizer, cleaned[text_key], tokens)
    labels = [[str(text)[a:b] for a, b in row] for text, row in zip(cleaned[text_key], spans)]
    written += attention.write_all(model, tokens, [len(s) for s in spans], labels, examples.names, out / "attention")
  return written


def language_model_maps(model, texts: list[str], out: Path) -> list[Path]:
  """The GPT's attention maps of `texts`, each its UTF-8 bytes (at most block_size of them, the first)."""
  from research.serve.generate import encode

  rows = [encode(text)[:model.block_size] for text in texts]
  if not all(len(r) for r in rows):
    raise ConfigError("an empty text has no tokens to draw attention over; give non-empty --inputs.")
  tokens = np.zeros((len(rows), max(map(len, rows))), np.int32)  # padding after a row: causal attention ignores it
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
  names = [t if len(t) <= 40 else t[:37] + "..." for t in texts]
  return attention.write_all(model, tokens, [len(r) for r in rows], [attention.byte_labels(r) for r in rows], names,
                             out)
