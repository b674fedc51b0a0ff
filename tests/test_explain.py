"""research/explain: integrated gradients are complete, attributions depend on the weights, attention maps are the
model's own probabilities, and scripts/explain.py writes readable overlays, escaped HTML and TensorBoard text."""

from __future__ import annotations

import io
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from research.explain import attention, attribution, run, tokens
from research.explain import model as model_lib
from research.train import experiment
from tests import helpers

DIGITS = [helpers.ROOT / "docs/examples/mnist_test_0_label_7.png", helpers.ROOT / "docs/examples/mnist_test_1_label_2.png"]
REVIEWS = ['A gripping, <b>funny</b> film & a "great" cast.', "dull and lifeless", "the plot is thin but it works"]


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
  workdir = helpers.smoke_run(tmp_path_factory, "mnist_cnn").workdir
  model, config, _ = experiment.trained_model(workdir)
  images = np.stack([np.asarray(Image.open(p).convert("L"))[..., None] for p in DIGITS])
  pipeline = experiment.preprocessor(config, workdir)
  x, baseline = (np.asarray(pipeline({"image": i})["image"], np.float32) for i in (images, np.zeros_like(images)))
  return workdir, model, config, x, baseline


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
  workdir = helpers.smoke_run(tmp_path_factory, "rotten_tomatoes_transformer").workdir
  model, config, _ = experiment.trained_model(workdir)
  batch = experiment.preprocessor(config, workdir)({"text": np.array(REVIEWS, dtype=object)})
  return workdir, model, np.asarray(batch["tokens"], np.int32)


def test_integrated_gradients_of_images_are_complete(cnn):
  _, model, _, x, baseline = cnn
  f, state = model_lib.pure(model)
  target = np.asarray(model(jnp.asarray(x))).argmax(1)
  result = attribution.integrated_gradients(f, state, x, baseline, target)  # the defaults
  pick = lambda logits: np.take_along_axis(np.asarray(logits, np.float64), target[:, None], 1)[:, 0]
  expected = pick(model(jnp.asarray(x))) - pick(model(jnp.asarray(baseline)))  # the model itself, no attribution code
  sums = result.attributions.reshape(len(x), -1).sum(1, dtype=np.float64)
  assert np.all(np.abs(sums - expected) <= 0.01 * np.abs(expected)), (sums, expected, result.steps)
  assert np.abs(expected).min() > 1e-3  # a real difference to be complete about


def test_token_attributions_are_complete_and_zero_on_padding(transformer):
  _, model, ids = transformer
  target = np.asarray(model(jnp.asarray(ids))).argmax(1)
  found = tokens.token_attributions(model, ids, target)
  mask = jnp.asarray(ids != 0)
  zeros = jnp.zeros((*ids.shape, model.embed.embedding.shape[1]))
  pick = lambda logits: np.take_along_axis(np.asarray(logits, np.float64), target[:, None], 1)[:, 0]
  expected = pick(model(jnp.asarray(ids))) - pick(model.from_embeddings(zeros, mask))
  assert np.all(np.abs(found.scores.sum(1) - expected) <= 0.01 * np.abs(expected)), (found.scores.sum(1), expected)
  assert np.all(found.scores[ids == 0] == 0) and np.all(found.result.steps == attribution.DEFAULT_STEPS)


def test_attributions_change_when_the_weights_are_reinitialized(cnn):
  """The model-randomization sanity check of Adebayo et al. (2018): an explanation that ignores the weights fails."""
  workdir, model, config, x, baseline = cnn
  config = config.copy_and_resolve_references()
  config.seed += 1
  fresh = experiment.build_model(config, experiment.model_examples(config, workdir), experiment.preprocessor(config, workdir))
  maps = []
  for m in (model, fresh):
    f, state = model_lib.pure(m)
    target = np.zeros(len(x), np.int32)  # the same class for both: only the weights differ
    maps.append(attribution.integrated_gradients(f, state, x, baseline, target, tolerance=None).attributions.ravel())
    maps.append(attribution.saliency(f, state, x, target).ravel())
  for trained, random in ((maps[0], maps[2]), (maps[1], maps[3])):
    assert abs(np.corrcoef(trained, random)[0, 1]) < 0.5
    assert np.linalg.norm(trained - random) > 0.5 * np.linalg.norm(trained)


def _softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _probabilities(layer, x, mask):
  """softmax(q k^T / sqrt(d)) in float64 numpy from the layer's own qkv projection (each head's q, k, v in turn);
  mask bool[B or 1, 1, L, L]."""
  kernel, bias = (np.asarray(p[...], np.float64) for p in (layer.qkv_heads.kernel, layer.qkv_heads.bias))
  b, length, _ = x.shape
  q, k, v = np.split((np.asarray(x, np.float64) @ kernel + bias).reshape(b, length, layer.num_heads, -1), 3, 3)
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(layer.head_dim)
  return _softmax(np.where(mask, logits, -np.inf)), v


def test_transformer_attention_maps_are_its_probabilities(transformer):
  _, model, ids = transformer
  maps = attention.attention_maps(model, jnp.asarray(ids))
  assert not any(layer.capture_weights for layer in attention.attention_layers(model))  # the original is untouched
  mask = jnp.asarray(ids != 0)
  x = model.embed(jnp.asarray(ids)) + model.position_table[:ids.shape[1]]
  for block, captured in zip(model.blocks, maps, strict=True):
    h = block.norm1(x)
    expected, v = _probabilities(block.attention, h, np.asarray(mask)[:, None, None, :])
    np.testing.assert_allclose(captured, expected, atol=2e-6)
    mixed = np.einsum("bhqk,bkhd->bqhd", expected, v).reshape(h.shape)
    np.testing.assert_allclose(block.attention.out(jnp.asarray(mixed, jnp.float32)), block.attention(h, mask),
                               atol=2e-5)  # the probabilities the (fast) path used
    x = block(x, mask)


def test_gpt_attention_maps_are_its_causal_probabilities(tmp_path_factory):
  model, _, _ = experiment.trained_model(helpers.smoke_run(tmp_path_factory, "shakespeare_gpt").workdir)
  ids = jnp.asarray(np.frombuffer(b"ROMEO: But soft, what light", np.uint8)[None].astype(np.int32))
  maps = attention.attention_maps(model, ids)
  causal = np.tril(np.ones((ids.shape[1], ids.shape[1]), bool))[None, None]
  x = model.token_embed(ids) + model.pos_embed(jnp.arange(ids.shape[1]))
  for block, captured in zip(model.blocks, maps, strict=True):
    expected, _ = _probabilities(block.attn, block.ln1(x), causal)
    np.testing.assert_allclose(captured, expected, atol=2e-6)
    assert np.all(captured[..., ~causal[0, 0]] == 0)
    x, _ = block(x)


def test_explain_writes_overlays_for_misclassified_digits(cnn, tmp_path):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  workdir, *_ = cnn
  written = run.explain(workdir, misclassified=2, out=tmp_path, log=lambda _: None)
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert len(summary["examples"]) == 2 and sum(p.suffix == ".png" for p in written) == 2
  for example in summary["examples"]:
    assert example["predicted"] != example["label"] and example["name"].startswith("test ")
    assert abs(example["completeness_error"]) <= 0.01 * abs(example["target_logit"] - example["baseline_logit"])
    with Image.open(tmp_path / example["file"]) as image:
      assert image.width >= 3 * 28 * 8 and image.height >= 28 * 8
      panel = np.asarray(image.convert("RGB"))
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0}).Reload()
    shown, = events.Images(f"explain/{Path(example['file']).stem}")  # TensorBoard's Images tab: the same panel
    with Image.open(io.BytesIO(shown.encoded_image_string)) as image:
      np.testing.assert_array_equal(np.asarray(image.convert("RGB")), panel)
  arrays = np.load(tmp_path / "attributions.npz")
  assert arrays["integrated_gradients"].shape == arrays["images"].shape == (2, 28, 28, 1)


def test_explain_texts_escape_html_and_reach_tensorboard(transformer, tmp_path):
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  workdir, model, ids = transformer
  run.explain(workdir, inputs=REVIEWS[:2], out=tmp_path)
  page = (tmp_path / "tokens.html").read_text()
  assert "&lt;b&gt;funny&lt;/b&gt;" in page and "<b>" not in page and "&amp;" in page
  summary = json.loads((tmp_path / "summary.json").read_text())["examples"]
  first = summary[0]
  assert "".join(t["text"] for t in first["tokens"]) == first["text"][:first["tokens"][-1]["end"]]
  assert abs(sum(t["attribution"] for t in first["tokens"]) - (first["target_logit"] - first["baseline_logit"])) \
      <= 0.01 * abs(first["target_logit"] - first["baseline_logit"])
  events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0}).Reload()
  tags = [t for t in events.Tags()["tensors"] if t.startswith("explain/tokens/")]
  assert len(tags) == 2
  table = events.Tensors(tags[1])[0].tensor_proto.string_val[0].decode()
  assert "| dull | " in table or "| d" in table
  maps = np.load(tmp_path / "attention" / "dull_and_lifeless" / "attention.npy")
  labels = json.loads((tmp_path / "attention" / "dull_and_lifeless" / "tokens.json").read_text())
  n = int((ids[1] != 0).sum())
  assert maps.shape == (len(model.blocks), model.blocks[0].attention.num_heads, n, n) and len(labels) == n
  np.testing.assert_allclose(maps.sum(-1), 1.0, atol=1e-5)


def test_explain_script_rejects_bad_input_in_one_line(tmp_path):
  done = helpers.run_script("explain.py", "--workdir", str(tmp_path / "missing"), "--misclassified", "2", devices=1)
  assert done.returncode == 2 and done.stderr.count("\n") == 1 and "does not exist" in done.stderr
