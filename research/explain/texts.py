"""Token attributions of a text classifier, as a highlighted HTML page, TensorBoard text and JSON.

Each text is shown as the model read it (after the run's cleaning, e.g. lowercased), every token's
characters shaded by its integrated-gradients attribution toward the predicted class (red: for it,
blue: against it); text past the tokenizer's max_length is grey. TensorBoard gets a table per example
under the tag `explain/tokens/<name>` in OUT/tensorboard.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from research import atomic
from research.explain import model as model_lib
from research.explain import render
from research.explain import tokens as tokens_lib
from research.explain.images import slugs, write_summary
from research.explain.inputs import Examples
from research.logging import summary_writer_class


def explain(model, examples: Examples, clean, preprocess, config, workdir: Path, class_names: list[str], out: Path,
            step: int, **options) -> list[Path]:
  """Writes OUT/tokens.html, OUT/summary.json and TensorBoard text in OUT/tensorboard; returns the paths.
  `clean` rewrites a raw batch as training's cleaning did; `preprocess` turns the cleaned batch into model inputs."""
  tokenizer, text_key = tokens_lib.tokenizer(config, workdir)
  texts = [str(t) for t in clean(dict(examples.raw))[text_key]]
  tokens = np.asarray(preprocess(clean(dict(examples.raw)))[config.data.input_key], np.int32)
  f, state = model_lib.pure(model)
  probabilities = model_lib.probabilities(model_lib.logits(f, state, tokens))
  target = probabilities.argmax(1)
  found = tokens_lib.token_attributions(model, tokens, target, **options)
  spans = tokens_lib.spans(tokenizer, texts, tokens)
  sections, summary = [], []
  out.mkdir(parents=True, exist_ok=True)
  tensorboard = summary_writer_class()(str(out / "tensorboard"))
  try:
    for i, (name, stem) in enumerate(zip(examples.names, slugs(examples.names))):
      n = len(spans[i])
      words, scores = [texts[i][a:b] for a, b in spans[i]], found.scores[i, :n]
      predicted = class_names[target[i]]
      truth = "" if examples.labels is None else f"true {class_names[int(examples.labels[i])]}, "
      heading = f"{name}: {truth}predicted {predicted} (p={probabilities[i, target[i]]:.2f})"
      note = (f"{n} tokens; attributions sum to {scores.sum():+.4f}, the logit of {predicted} minus its logit with "
              f"all-zero embeddings is {found.result.score[i] - found.result.baseline_score[i]:+.4f}")
      sections.append((heading, render.highlighted(texts[i], spans[i], scores, words), note))
      tensorboard.add_text(f"explain/tokens/{stem}", f"**{render.markdown_cell(heading)}**\n\n"
                           + render.markdown_table(words, scores), step)
      summary.append({"name": name, "text": texts[i], "predicted": predicted,
                      "probability": round(float(probabilities[i, target[i]]), 6),
                      "label": None if examples.labels is None else class_names[int(examples.labels[i])],
                      "tokens": [{"text": w, "start": a, "end": b, "attribution": float(s)}
                                 for w, (a, b), s in zip(words, spans[i], scores)],
                      "target_logit": float(found.result.score[i]),
                      "baseline_logit": float(found.result.baseline_score[i]),
                      "completeness_error": float(found.result.delta[i]), "steps": int(found.result.steps[i])})
  finally:
    tensorboard.close()
  page = out / "tokens.html"
  atomic.write_text(page, render.page(
      f"Token attributions: {workdir.name} (step {step})",
      "Integrated gradients of the predicted class's logit along the token embeddings, from all-zero embeddings "
      "to the tokens' own. Red: the token pushes toward the predicted class; blue: away from it. Hover over a "
      "token for its score.", sections))
  return [page, write_summary(out, {"method": "integrated gradients", **options}, summary), out / "tensorboard"]
