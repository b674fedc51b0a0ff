"""Integrated gradients and saliency of an image classifier, drawn over the images it saw.

The baseline is the all-black image (raw pixels 0) run through the run's preprocessing; the target is the
predicted class. Attributions are computed on the model's input (after e.g. normalize or flatten, which act
pixel by pixel) and drawn on the raw image: integrated gradients summed over channels (red: toward the
predicted class, blue: against it), saliency as the largest absolute gradient over channels. Each example's panel is a
PNG and a TensorBoard image (tag `explain/<name>`, in OUT/tensorboard, at the checkpoint's step).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from research import atomic
from research.errors import ConfigError
from research.explain import attribution, render
from research.explain import model as model_lib
from research.explain.inputs import Examples
from research.logging import summary_writer_class


def explain(model, examples: Examples, preprocess, input_key: str, class_names: list[str], out: Path, step: int,
            **options) -> list[Path]:
  """Writes OUT/<name>.png (input, integrated gradients, saliency) per example, the same panels to
  OUT/tensorboard at `step`, OUT/attributions.npz and OUT/summary.json; returns the paths. `options`: steps,
  method, batch_points of integrated gradients."""
  (key, raw), = examples.raw.items()
  x = np.asarray(preprocess({key: raw})[input_key], np.float32)
  baseline = np.asarray(preprocess({key: np.zeros_like(raw)})[input_key], np.float32)
  if x[0].size != raw[0].size:
    raise ConfigError(f"the preprocessed input {x.shape[1:]} does not map pixel by pixel onto the raw image "
                      f"{raw.shape[1:]}: its attributions cannot be drawn on it.")
  f, state = model_lib.pure(model)
  probabilities = model_lib.probabilities(model_lib.logits(f, state, x))
  target = probabilities.argmax(1)
  ig = attribution.integrated_gradients(f, state, x, baseline, target, **options)
  gradient = attribution.saliency(f, state, x, target)
  on_pixels = lambda a: a.reshape(raw.shape).astype(np.float32)
  ig_map, saliency_map = on_pixels(ig.attributions).sum(-1), np.abs(on_pixels(gradient)).max(-1)
  out.mkdir(parents=True, exist_ok=True)
  written, summary, panels = [], [], {}
  for i, (name, stem) in enumerate(zip(examples.names, slugs(examples.names))):
    predicted = class_names[target[i]]
    truth = "" if examples.labels is None else f"true {class_names[int(examples.labels[i])]}, "
    title = f"{name}: {truth}predicted {predicted} (p={probabilities[i, target[i]]:.2f})"
    panel = render.image_panel(title, [
        ("input", render.signed_overlay(raw[i], np.zeros(raw.shape[1:3]))),
        (f"integrated gradients for {predicted}", render.signed_overlay(raw[i], ig_map[i])),
        ("saliency |gradient|", render.magnitude_overlay(raw[i], saliency_map[i]))])
    path = out / f"{stem}.png"
    with atomic.replacing(path) as tmp:
      panel.save(tmp, format="PNG")
    written.append(path)
    panels[stem] = np.asarray(panel.convert("RGB"))
    summary.append({"name": name, "file": path.name, "predicted": predicted,
                    "probability": round(float(probabilities[i, target[i]]), 6),
                    "label": None if examples.labels is None else class_names[int(examples.labels[i])],
                    "target_logit": float(ig.score[i]), "baseline_logit": float(ig.baseline_score[i]),
                    "attribution_sum": float(ig.attributions[i].sum()), "completeness_error": float(ig.delta[i]),
                    "steps": int(ig.steps[i])})
  tensorboard = summary_writer_class()(str(out / "tensorboard"))
  try:
    for stem, pixels in panels.items():
      tensorboard.add_image(f"explain/{stem}", pixels, step, dataformats="HWC")
  finally:
    tensorboard.close()
  arrays = out / "attributions.npz"
  with atomic.replacing(arrays) as tmp, open(tmp, "wb") as file:
    np.savez(file, names=np.array(examples.names), images=raw, integrated_gradients=on_pixels(ig.attributions),
             saliency=on_pixels(gradient), target=target)
  summary_file = write_summary(out, {"method": "integrated gradients", **options}, summary)
  return [*written, arrays, out / "tensorboard", summary_file]


def write_summary(out: Path, settings: dict, examples: list[dict]) -> Path:
  path = out / "summary.json"
  atomic.write_text(path, json.dumps({"settings": settings, "examples": examples}, indent=2) + "\n")
  return path


def slugs(names: list[str]) -> list[str]:
  """A distinct file name stem per example name: 'test 123' -> 'test_123', 'digits/7.png' -> '7',
  'batch.npy[3]' -> 'batch_3', a second '7' -> '7_2'."""
  found = []
  for name in names:
    path, _, index = name.partition("[")
    stem = Path(path).stem if Path(path).suffix else path
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem + (f"_{index.rstrip(']')}" if index else ""))[:60].strip("_") or "x"
    found.append(stem if stem not in found else f"{stem}_{sum(s.startswith(stem) for s in found) + 1}")
  return found
