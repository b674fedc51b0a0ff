"""Evaluate any checkpoint of a run on a split, exactly as the training loop does, and report it.

`evaluate_checkpoint` sums the metrics over every example of the split with
the run's own eval step, so its numbers are the ones training logged. For a
classifier (a model without its own `loss`, on data with labels) it also sums
the confusion matrix over the whole split, and reports per-class precision,
recall and F1 from it. `write` saves the result as
WORKDIR/eval/<split>_<step>.json, with the confusion matrix drawn beside it
(<split>_<step>_confusion.png); `report` formats it as tables for a console.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from research import atomic, metrics, optim, parallel, sharding
from research.checkpoint import Checkpointer
from research.data import spec as data_spec
from research.errors import ConfigError
from research.models.interface import abilities
from research.train import experiment
from research.train.hooks_core import evaluate
from research.train.step import make_steps

EVAL_DIR = "eval"
MAX_PRINTED_CLASSES = 20  # larger confusion matrices are left to the JSON and the PNG


def load_split(config, split: str, workdir: str | Path | None = None) -> dict[str, np.ndarray]:
  """The split as training loads it; an unknown split is a ConfigError naming the dataset's splits (as
  WORKDIR/dataset.json records them, else as the dataset declares them)."""
  record = data_spec.read(workdir) if workdir else None
  splits = list(record.get("splits") or []) if record else []
  splits = splits or data_spec.splits(config.data.name)
  if split not in splits:
    raise ConfigError(f"Unknown --split {split!r}: dataset {config.data.name!r} has the splits {', '.join(splits)}.")
  return experiment.load_split(config, split)


def resolve_step(workdir: str | Path, config, step: str | int) -> int | None:
  """The checkpoint step `step` names (None: the latest), checked before any model is built; a step that is
  not there is a ConfigError listing the ones that are, and `best` without a marked best says why."""
  checkpoints = Checkpointer(Path(workdir) / "checkpoints", every=0, keep=0, read_only=True)
  try:
    available = checkpoints.steps()
    if step == "best" and available and checkpoints.best_step() is None:
      metric = config.checkpoint.get("best_metric", "")
      why = (f"no evaluation of {metric} was saved with a checkpoint" if metric else
             "its config has no checkpoint.best_metric, so training ranked no evaluations (train with e.g. "
             "--config.checkpoint.best_metric=accuracy to mark one)")
      raise ConfigError(f"--step best: no checkpoint in {workdir} is marked best: {why}. Use --step latest or "
                        f"one of the steps {', '.join(map(str, available))}.")
    return experiment.resolve_step(checkpoints, step)
  finally:
    checkpoints.close()


def class_names(config, workdir: str | Path, num_classes: int) -> list[str]:
  """The class names recorded in WORKDIR/dataset.json, else the dataset's LABEL_NAMES, else the indices."""
  record = data_spec.read(workdir) or {}
  for names in (record.get("label_names"), data_spec.label_names(config.data.name)):
    if isinstance(names, (list, tuple)) and len(names) == num_classes:
      return [str(n) for n in names]
  return [str(i) for i in range(num_classes)]


def with_confusion(eval_step, graphdef, mesh, state_sharding, input_key: str, label_key: str):
  """`eval_step` plus the batch's confusion matrix, in one jitted call (one executable per batch, as training's
  eval: more multi-device executables in flight can deadlock XLA:CPU, see DESIGN.md)."""

  def confusion(state, batch):
    model = nnx.merge(graphdef, state.params, state.model_state, copy=True)
    logits = model(batch[input_key], train=False, rngs=None).astype(jnp.float32)  # as research.train.step.forward
    return metrics.confusion_matrix(jnp.argmax(logits, -1), batch[label_key], logits.shape[-1], batch.get("mask"))

  confusion = jax.jit(confusion, in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
                      out_shardings=parallel.replicated(mesh))
  return jax.jit(lambda state, batch: {**eval_step(state, batch), "confusion": confusion(state, batch)})


def evaluate_checkpoint(workdir: str | Path, step: str | int = "latest", split: str = "test") -> dict:
  """Evaluates `step` ('latest', 'best' or a number) of `workdir` on the whole of `split`.

  Returns {"step", "split", "examples", "metrics": {...}}; for a classifier also "classes" (names),
  "per_class" (a row per class: precision, recall, f1, support) and "confusion_matrix" (counts; rows: true
  class, columns: predicted), and "metrics" gains precision_macro, recall_macro and f1_macro.
  """
  workdir = Path(workdir)
  config = experiment.load_config(workdir)
  arrays = load_split(config, split, workdir)  # a bad split or step fails before the model is built
  resolved = resolve_step(workdir, config, step)
  config, graphdef, state, meta = experiment.restore(workdir, "latest" if resolved is None else resolved, config)
  mesh = parallel.make_mesh(config)
  tx, _ = optim.build(config, 1)
  _, eval_step = make_steps(graphdef, tx, mesh, strategy=config.parallel.strategy, input_key=config.data.input_key,
                            state_sharding=sharding.of(state))
  model = nnx.merge(graphdef, state.params, state.model_state)
  declared = abilities(model)
  summarize = declared.summarize
  label_key = config.data.label_key
  classifier = declared.loss is None and label_key in arrays
  if classifier:
    eval_step = with_confusion(eval_step, graphdef, mesh, sharding.of(state), config.data.input_key, label_key)
  totals = {}

  def keep_totals(sums):
    totals.update(sums)
    return summarize(sums)

  results = evaluate(eval_step, state, arrays, config, mesh, experiment.preprocessor(config, workdir), keep_totals)
  result = {"step": int(meta["step"]), "split": split, "examples": len(next(iter(arrays.values()))),
            "metrics": results}
  if classifier:
    confusion = np.rint(np.asarray(totals["confusion"], np.float64)).astype(np.int64)
    names = class_names(config, workdir, len(confusion))
    result.update(classes=names, per_class=metrics.classification_report(confusion, names),
                  confusion_matrix=confusion.tolist())
  return result


# --- Output -------------------------------------------------------------------------------------------------


def write(result: dict, workdir: str | Path) -> list[Path]:
  """Writes WORKDIR/eval/<split>_<step>.json (and, for a classifier, <split>_<step>_confusion.png); returns
  the paths."""
  out = Path(workdir) / EVAL_DIR
  stem = f"{result['split']}_{result['step']}"
  written = [out / f"{stem}.json"]
  atomic.write_text(written[0], json.dumps(result, indent=2) + "\n")
  if "confusion_matrix" in result:
    image = confusion_image(np.asarray(result["confusion_matrix"]), result["classes"],
                            title=f"{result['split']} split, step {result['step']}: accuracy "
                                  f"{result['metrics'].get('accuracy', float('nan')):.4f}")
    written.append(out / f"{stem}_confusion.png")
    with atomic.replacing(written[1]) as tmp:
      image.save(tmp, format="PNG")
  return written


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
          for r in rows]


def report(result: dict) -> str:
  """The result as console text: the metrics, then for a classifier a per-class table and the confusion matrix."""
  lines = [f"step {result['step']}, split {result['split']} ({result['examples']:,} examples): "
           + ", ".join(f"{k} {v:.4g}" for k, v in result["metrics"].items())]
  if "per_class" not in result:
    return "\n".join(lines)
  rows = [["class", "precision", "recall", "f1", "support"]]
  rows += [[r["class"], f"{r['precision']:.4f}", f"{r['recall']:.4f}", f"{r['f1']:.4f}", str(r["support"])]
           for r in result["per_class"]]
  m = result["metrics"]
  if "precision_macro" in m:
    rows.append(["macro avg", f"{m['precision_macro']:.4f}", f"{m['recall_macro']:.4f}", f"{m['f1_macro']:.4f}",
                 str(sum(r["support"] for r in result["per_class"]))])
  lines += ["", *_table(rows, right={1, 2, 3, 4})]
  confusion, names = result["confusion_matrix"], result["classes"]
  if len(names) > MAX_PRINTED_CLASSES:
    lines += ["", f"confusion matrix: {len(names)} classes, see the JSON or the PNG"]
    return "\n".join(lines)
  plain = names == [str(i) for i in range(len(names))]
  rows = [["true \\ predicted", *map(str, range(len(names)))]]
  rows += [[name if plain else f"{i} {name}", *map(str, counts)]
           for i, (name, counts) in enumerate(zip(names, confusion))]
  lines += ["", "confusion matrix (rows: true class, columns: predicted class)",
            *_table(rows, right=set(range(1, len(names) + 1)))]
  return "\n".join(lines)


def confusion_image(confusion: np.ndarray, names: list[str], title: str = ""):
  """The confusion matrix as a heat map (a PIL image): each row shaded by the fraction of its true class
  predicted as each column, with the counts written in the cells when they fit."""
  from PIL import Image, ImageDraw, ImageFont  # (tensorboard's dependency)

  n = len(confusion)
  cell = int(np.clip(640 // max(n, 1), 6, 56))
  font = ImageFont.load_default(size=max(9, min(14, cell // 3 + 4)))
  measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  text_w = lambda s: int(np.ceil(measure.textlength(s, font=font)))
  text_h = int(font.getbbox("Hg")[3]) + 2
  labels = names if cell >= 10 else ["" for _ in names]
  label_w = max([text_w(s) for s in labels] + [0]) + 8
  margin_left, margin_top = text_h + 8 + label_w, text_h * 2 + 12 + label_w
  width, height = margin_left + n * cell + 12, margin_top + n * cell + text_h + 16
  image = Image.new("RGB", (max(width, text_w(title) + 16), height), "white")
  draw = ImageDraw.Draw(image)
  draw.text((8, 6), title, fill="black", font=font)
  totals = confusion.sum(1, keepdims=True)
  shade = np.divide(confusion, totals, out=np.zeros(confusion.shape, np.float64), where=totals > 0)
  low, high = np.array([247, 251, 255]), np.array([8, 48, 107])  # white to dark blue
  for t in range(n):
    for p in range(n):
      x, y = margin_left + p * cell, margin_top + t * cell
      color = tuple(int(c) for c in np.rint(low + shade[t, p] * (high - low)))
      draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=color, outline=(200, 200, 200))
      count = str(int(confusion[t, p]))
      if text_w(count) + 2 <= cell and text_h <= cell:
        draw.text((x + (cell - text_w(count)) / 2, y + (cell - text_h) / 2), count, font=font,
                  fill="white" if shade[t, p] > 0.5 else "black")
  for i, name in enumerate(labels):  # rows on the left, columns above (turned upright)
    draw.text((margin_left - 4 - text_w(name), margin_top + i * cell + (cell - text_h) / 2), name, fill="black",
              font=font)
    if name:
      label = Image.new("RGB", (text_w(name) + 2, text_h), "white")
      ImageDraw.Draw(label).text((0, 0), name, fill="black", font=font)
      label = label.rotate(90, expand=True)
      image.paste(label, (margin_left + i * cell + (cell - label.width) // 2, margin_top - 4 - label.height))
  axis = Image.new("RGB", (text_w("true class") + 2, text_h), "white")
  ImageDraw.Draw(axis).text((0, 0), "true class", fill="black", font=font)
  axis = axis.rotate(90, expand=True)
  image.paste(axis, (4, margin_top + max(0, (n * cell - axis.height) // 2)))
  draw.text((margin_left + max(0, (n * cell - text_w("predicted class")) // 2), text_h + 8), "predicted class",
            fill="black", font=font)
  return image
