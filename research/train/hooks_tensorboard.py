"""TensorBoard beyond the train and eval scalars, each a hook registered by name at its own period
(config.hooks, research/config.py; docs/tensorboard.md)::

    | name | when | what |
    |---|---|---|
    | `histograms` | every `hooks.histograms_every` steps | histograms of parameters, gradients and updates (`params/<path>`, `grads/<path>`, `updates/<path>`) |
    | `layer_norms` | every `hooks.layer_norms_every` steps | per-layer gradient and update norms (`grad_norm/<layer>`, `update_norm/<layer>`) |
    | `input_grid` | every `hooks.input_grid_every` steps | the first 16 training inputs after augmentation (`inputs/train`; image models) |
    | `confusion_matrix` | each evaluation, `hooks.confusion_matrix` | the confusion matrix image (`eval/confusion_matrix`) and per-class precision, recall and F1 (`per_class/<metric>/<class>`; classifiers) |
    | `schedule` | at the start, `hooks.schedule_points` | the whole learning-rate schedule, `schedule/learning_rate` at that many steps |
    | `param_norm` | every `train.log_every` steps (only when named in `hooks.extra`) | `train/param_norm`, the global norm of the parameters |

Gradients, updates and inputs are recomputed at these periods only (research/train/diagnostics.py): the train
step itself returns none of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from research import metrics, parallel
from research.data import augment as augment_lib
from research.models.vae import image_grid
from research.registry import HOOKS
from research.train import diagnostics
from research.train import evaluate as evaluate_lib
from research.train.hooks import Context, Hook, Run
from research.train.step import global_norm

GRID_IMAGES = 16


def _diagnostics(run: Run) -> tuple:
  """The run's jitted (gradients, inputs) functions, built once and shared by the hooks below."""
  if "diagnostics" not in run.cache:
    config = run.config
    run.cache["diagnostics"] = diagnostics.make(
        run.graphdef, run.tx, run.mesh, input_key=config.data.input_key, label_smoothing=config.label_smoothing,
        augment=augment_lib.build(config.data.augment), count=GRID_IMAGES)
  return run.cache["diagnostics"]


def _gradients(ctx: Context) -> dict:
  """This step's gradient diagnostics on the host, computed once however many hooks ask for them."""
  step, found = ctx.run.cache.get("gradients", (None, None))
  if step != ctx.step:
    found = jax.device_get(_diagnostics(ctx.run)[0](ctx.state, ctx.batch))
    ctx.run.cache["gradients"] = (ctx.step, found)
  return found


class Histograms(Hook):
  def __init__(self, every: int):
    self.every = every

  def __call__(self, ctx: Context) -> None:
    counts = {path: int(np.size(x)) for path, x in diagnostics.flat(ctx.state.params).items()}
    ctx.run.writer.histograms(ctx.step, {tag: {**h, "num": counts.get(tag.partition("/")[2], int(np.sum(h["bucket_counts"])))}
                                         for tag, h in _gradients(ctx)["histograms"].items()})


class LayerNorms(Hook):
  def __init__(self, every: int):
    self.every = every

  def __call__(self, ctx: Context) -> None:
    found = _gradients(ctx)
    ctx.run.writer.scalars(ctx.step, {f"{kind}/{layer}": float(v) for kind in ("grad_norm", "update_norm")
                                      for layer, v in found[kind].items()})


class InputGrid(Hook):
  """Image models only (inputs [batch, height, width, channels]); each grid is scaled to [0, 1] for display."""

  def __init__(self, every: int):
    self.every = every

  def __call__(self, ctx: Context) -> None:
    if np.ndim(ctx.batch[ctx.run.config.data.input_key]) != 4:
      return
    images = np.asarray(jax.device_get(_diagnostics(ctx.run)[1](ctx.state, ctx.batch)), np.float32)
    if images.shape[-1] not in (1, 3):
      images = images[..., :1]  # one channel of many, shown in grey
    low, high = images.min(), images.max()
    images = (images - low) / (high - low) if high > low else np.zeros_like(images)
    ctx.run.writer.summaries(ctx.step, {"inputs/train": image_grid(images, columns=8)})


class ConfusionMatrix(Hook):
  """Classifiers only: the loop evaluates with the confusion matrix (research/train/evaluate.py) when this is on."""
  at_eval = True

  def __call__(self, ctx: Context) -> None:
    if "confusion" not in (ctx.eval_sums or {}):
      return
    run = ctx.run
    confusion = np.rint(np.asarray(ctx.eval_sums["confusion"], np.float64)).astype(np.int64)
    names = evaluate_lib.class_names(run.config, run.workdir, len(confusion))
    title = f"step {ctx.step}: accuracy {ctx.eval_metrics.get('accuracy', float('nan')):.4f}"
    image = np.asarray(evaluate_lib.confusion_image(confusion, names, title), np.float32) / 255.0
    run.writer.summaries(ctx.step, {"eval/confusion_matrix": image})
    rows = metrics.classification_report(confusion, names)
    run.writer.scalars(ctx.step, {f"per_class/{metric}/{row['class']}": row[metric] for row in rows
                                  for metric in ("precision", "recall", "f1")})


class Schedule(Hook):
  """The learning rate each of `points` evenly spaced steps will apply; on a resume, only the steps after it
  (TensorBoard drops the events past a resumed step)."""
  at_start = True

  def __init__(self, points: int):
    self.points = points

  def __call__(self, ctx: Context) -> None:
    run = ctx.run
    steps = np.unique(np.linspace(1, run.total_steps, min(self.points, run.total_steps)).round().astype(np.int64))
    steps = steps[steps > run.start]
    if not len(steps):
      return
    rates = np.asarray(jax.vmap(run.schedule)(jnp.asarray(steps - 1)))
    for step, rate in zip(steps.tolist(), rates.tolist()):
      run.writer.scalars(step, {"schedule/learning_rate": rate}, jsonl=False)  # future steps: not progress


class ParamNorm(Hook):
  def __init__(self, every: int):
    self.every = every

  def __call__(self, ctx: Context) -> None:
    if "param_norm" not in ctx.run.cache:
      ctx.run.cache["param_norm"] = jax.jit(global_norm, out_shardings=parallel.replicated(ctx.run.mesh))
    ctx.run.writer.scalars(ctx.step, {"train/param_norm": float(ctx.run.cache["param_norm"](ctx.state.params))})


HOOKS.register("histograms")(lambda config: Histograms(config.hooks.histograms_every))
HOOKS.register("layer_norms")(lambda config: LayerNorms(config.hooks.layer_norms_every))
HOOKS.register("input_grid")(lambda config: InputGrid(config.hooks.input_grid_every))
HOOKS.register("confusion_matrix")(lambda config: ConfusionMatrix())
HOOKS.register("schedule")(lambda config: Schedule(config.hooks.schedule_points))
HOOKS.register("param_norm")(lambda config: ParamNorm(config.train.log_every))


def configured(config) -> list[Hook]:
  """The hooks of this module that `config.hooks` turns on (a period or count of 0, or False, is off)."""
  on = {"histograms": config.hooks.histograms_every, "layer_norms": config.hooks.layer_norms_every,
        "input_grid": config.hooks.input_grid_every, "confusion_matrix": config.hooks.confusion_matrix,
        "schedule": config.hooks.schedule_points}
  return [HOOKS.get(name)(config) for name, value in on.items() if value]
