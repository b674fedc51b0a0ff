"""Hooks and the TensorBoard summaries they write, read back with TensorBoard's own EventAccumulator.

One run of configs/mnist_cnn.py:smoke (8 steps, an image classifier with augmentation) has every optional hook
on at short periods, plus a hook of this module's own, added by its registered name; its parameters are then
held bit for bit to a run with no optional hooks and to a replay of the bare train step.
"""

import contextlib
import io
import json

import jax
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from research import config as config_lib
from research import optim, parallel
from research.data import augment
from research.data.pipeline import Pipeline
from research.errors import ConfigError
from research.registry import HOOKS
from research.train import evaluate as evaluate_lib
from research.train import experiment
from research.train.hooks import FunctionHook
from research.train.loop import train
from research.train.step import make_steps
from tests import helpers

CONFIG = "configs/mnist_cnn.py:smoke"  # 8 steps of 64, checkpoints and evaluations at steps 4 and 8
NOTES: list[int] = []


@HOOKS.register("test_notes")
def _notes(config):
  """Writes a text summary naming the step and the loss of the newest step it saw."""

  def note(ctx):
    NOTES.append(ctx.step)
    ctx.run.writer.summaries(ctx.step, {"notes/text": f"step {ctx.step}: loss {ctx.step_metrics[-1]['loss']:.6f}"})

  return FunctionHook(note, every=1000)  # its period comes from the config: "test_notes:3"


def _config(**hooks):
  config = config_lib.load(CONFIG)
  config.hooks.update(hooks)
  return config


NO_OPTIONAL_HOOKS = {"histograms_every": 0, "layer_norms_every": 0, "input_grid_every": 0, "confusion_matrix": False,
                     "model_summaries": False, "schedule_points": 0}


@pytest.fixture(scope="module")
def hooked(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("hooked")
  NOTES.clear()
  config = _config(histograms_every=4, layer_norms_every=2, input_grid_every=4, schedule_points=8,
                   extra=("test_notes:3", "param_norm:4"))
  final = train(config, workdir)
  events = EventAccumulator(str(workdir / "tensorboard"),
                            size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0}).Reload()
  return workdir, final, events, list(NOTES)


def test_a_hook_registered_by_name_runs_at_its_period_and_its_text_reads_back(hooked):
  workdir, _, events, notes = hooked
  assert notes == [3, 6]
  texts = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("notes/text/text_summary")}
  assert sorted(texts) == [3, 6] and texts[3].startswith("step 3: loss ")
  assert [e.step for e in events.Scalars("train/param_norm")] == [4, 8]
  with pytest.raises(ConfigError, match=r"hooks.extra='test_nots': unknown hook. Did you mean 'test_notes'\?"):
    train(_config(extra=("test_nots",)), workdir.parent / "bad")
  with pytest.raises(ConfigError, match="hooks.extra entry 'test_notes:0': write 'name' or 'name:EVERY'"):
    train(_config(extra=("test_notes:0",)), workdir.parent / "bad")
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "train/loss" in r] == [5, 8]  # the loop's own logging ran beside it


def test_histograms_of_parameters_match_the_checkpoint(hooked):
  workdir, _, events, _ = hooked
  params = helpers.checkpoint_params(workdir, 4)
  tags = set(events.Tags()["histograms"])
  assert {f"{kind}/{path}" for kind in ("params", "grads", "updates") for path in params} == tags
  for path, value in params.items():
    (event,) = [e for e in events.Histograms(f"params/{path}") if e.step == 4]
    h = event.histogram_value
    assert (h.min, h.max, h.num) == (value.min(), value.max(), value.size), path
    assert h.sum == pytest.approx(value.sum(), rel=1e-4, abs=1e-4)
    counts, edges = np.histogram(value, bins=30, range=(value.min(), value.max()))
    assert np.abs(np.asarray(h.bucket) - counts).sum() <= 2, path  # (float32 edges may move a value one bucket)
    np.testing.assert_allclose(h.bucket_limit, edges[1:], rtol=1e-5, atol=1e-6)
  # per-layer norms are the norms of the histogrammed tensors of each layer
  for kind in ("grad", "update"):
    norm = {e.step: e.value for e in events.Scalars(f"{kind}_norm/hidden")}
    assert sorted(norm) == [2, 4, 6, 8]
    squares = sum(e.histogram_value.sum_squares for tag in (f"{kind}s/hidden/kernel", f"{kind}s/hidden/bias")
                  for e in events.Histograms(tag) if e.step == 4)
    assert norm[4] == pytest.approx(np.sqrt(squares), rel=1e-4)


def test_images_decode_to_the_expected_size(hooked):
  workdir, final, events, _ = hooked
  grids = events.Images("inputs/train")
  image = Image.open(io.BytesIO(grids[0].encoded_image_string))
  assert [e.step for e in grids] == [4, 8] and image.size == (8 * 30 + 2, 2 * 30 + 2)  # 16 28x28 inputs, 8 a row, 2-pixel gaps
  pixels = np.asarray(image)
  assert pixels.min() == 0 and pixels.max() == 255  # scaled to the full range for display
  confusion = events.Images("eval/confusion_matrix")
  assert [e.step for e in confusion] == [4, 8]
  names = evaluate_lib.class_names(config_lib.load(CONFIG), workdir, 10)
  expected = evaluate_lib.confusion_image(np.zeros((10, 10), np.int64), names,
                                          f"step 8: accuracy {final['accuracy']:.4f}")
  assert Image.open(io.BytesIO(confusion[-1].encoded_image_string)).size == expected.size


def test_per_class_metrics_and_the_schedule_are_scalars(hooked):
  _, final, events, _ = hooked
  f1 = [events.Scalars(f"per_class/f1/{c}")[-1].value for c in range(10)]
  assert np.mean(f1) == pytest.approx(final["f1_macro"], rel=1e-5)
  assert events.Scalars("eval/accuracy")[-1].value == pytest.approx(final["accuracy"])
  _, schedule = optim.build(config_lib.load(CONFIG), 8)
  rates = {e.step: e.value for e in events.Scalars("schedule/learning_rate")}
  assert rates == pytest.approx({s: float(schedule(s - 1)) for s in range(1, 9)})


def _replay(config) -> dict:
  """The bare train step over the run's batches, without the loop: parameters after the last step."""
  train_arrays = experiment.load_split(config, "train")
  preprocess = experiment.preprocessor(config, None, train_arrays)
  mesh = parallel.make_mesh(config)
  make_model = experiment.model_factory(config, train_arrays, preprocess, config.compute_dtype)  # as the loop does
  graphdef, state, tx, _ = experiment.build_state(config, make_model, config.train.steps, mesh)
  step, _ = make_steps(graphdef, tx, mesh, strategy="auto", input_key="image", augment=augment.build(config.data.augment))
  pipeline = Pipeline(train_arrays, batch_size=config.data.batch_size, sharding=parallel.batch_sharding(mesh),
                      preprocess=preprocess, seed=config.seed, shuffle=config.data.shuffle)
  with contextlib.closing(pipeline.iterate(0, config.train.steps)) as batches:
    for batch in batches:
      state, _ = step(state, batch)
  return jax.device_get(state.params)


def test_hooks_leave_the_parameters_bitwise_unchanged(hooked, tmp_path):
  workdir, _, _, _ = hooked
  train(_config(**NO_OPTIONAL_HOOKS), tmp_path)
  with_hooks, without = helpers.checkpoint_params(workdir, 8), helpers.checkpoint_params(tmp_path, 8)
  replayed = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
              for path, v in jax.tree_util.tree_flatten_with_path(_replay(_config()))[0]}
  assert with_hooks.keys() == without.keys() == replayed.keys()
  for key in with_hooks:
    assert np.array_equal(with_hooks[key], without[key]), key
    assert np.array_equal(without[key], replayed[key]), key
