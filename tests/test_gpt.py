"""GPT decoder LM and the Shakespeare data: shapes, overfitting, KV-cache equivalence, seeded sampling,
the character windows, and the :smoke config trained on 8 devices with a text sample in TensorBoard."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from research.data import get_split, shakespeare
from research.models.gpt import GPT, generate, sample_logits
from tests import helpers

TEXT = ("Kent.\nI thought the King had more affected the Duke of Albany than\nCornwall.\n\nGlou.\n"
        "It did always seem so to us; but now, in the division of the\nkingdom, it appears not which of "
        "the Dukes he values most.\n")


def tiny(tie=True, block_size=64, **kwargs):
  return GPT(256, block_size, 2, 4, 32, tie_embeddings=tie, rngs=nnx.Rngs(0), **kwargs)


def random_tokens(shape, seed=1):
  return jax.random.randint(jax.random.key(seed), shape, 0, 256, dtype=jnp.int32)


@pytest.mark.parametrize("tie", [True, False])
def test_shapes_and_dtypes(tie):
  model = tiny(tie)
  logits = model(random_tokens((3, 20)))
  assert logits.shape == (3, 20, 256) and logits.dtype == jnp.float32
  assert (model.head is None) == tie
  params = nnx.state(model, nnx.Param)
  names = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(params)}
  assert any(n.startswith("head") for n in names) != tie  # tied: no separate output matrix
  batch = {"tokens": np.asarray(random_tokens((4, 257)), np.uint8)}  # 256 targets -> 4 chunks of 64
  loss, sums = model.loss(batch, train=False)
  assert loss.shape == () and sums["count"] == 4 * 256
  assert abs(float(loss) - np.log(256)) < 0.1  # an untrained model is ~uniform over bytes
  out = generate(model, np.zeros((2, 5), np.int32), 7, rng=jax.random.key(0))
  assert out.shape == (2, 12) and out.dtype == np.int32
  with pytest.raises(ValueError, match="block_size"):
    model(random_tokens((1, 65)))
  assert generate(model, np.zeros((1, 60), np.int32), 5, rng=jax.random.key(0)).shape == (1, 65)  # slides


def test_loss_respects_the_row_mask_and_matches_a_direct_computation():
  model = tiny()
  tokens = np.asarray(random_tokens((4, 65)), np.uint8)
  _, sums = model.loss({"tokens": tokens, "mask": np.array([1, 0, 1, 0], np.float32)}, train=False)
  _, kept = model.loss({"tokens": tokens[[0, 2]]}, train=False)
  np.testing.assert_allclose(sums["loss_sum"], kept["loss_sum"], rtol=1e-6)
  assert sums["count"] == kept["count"] == 2 * 64
  logp = np.asarray(jax.nn.log_softmax(model(tokens[[0, 2], :-1])))  # direct: -log p(next token)
  expected = -np.take_along_axis(logp, tokens[[0, 2], 1:, None].astype(np.int64), -1).sum()
  np.testing.assert_allclose(float(kept["loss_sum"]), expected, rtol=1e-5)
  summary = model.summarize(jax.device_get(sums))
  assert summary["perplexity"] == pytest.approx(np.exp(summary["loss"]))
  assert summary["bits_per_token"] == pytest.approx(summary["loss"] / np.log(2))


def test_overfits_one_small_batch():
  model = tiny(block_size=32)
  tokens = shakespeare.encode(TEXT)[:4 * 33].reshape(4, 33)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state):
    loss_fn = lambda p: nnx.merge(graphdef, p, rest).loss({"tokens": tokens}, train=True)[0]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  for _ in range(300):
    params, opt_state, loss = step(params, opt_state)
  assert float(loss) < 0.05  # from ln(256) = 5.5


@pytest.mark.parametrize("tie,prefill", [(True, 1), (True, 17), (False, 9)])
def test_kv_cache_decoding_gives_the_full_forward_logits(tie, prefill):
  model = tiny(tie)
  tokens = random_tokens((3, 48), seed=2)
  full = model(tokens)
  cache = model.init_cache(3, 48)
  logits, cache = model.forward(tokens[:, :prefill], cache=cache, index=0)  # prefill
  steps = [logits]
  for i in range(prefill, 48):  # then one token at a time
    logits, cache = model.forward(tokens[:, i:i + 1], cache=cache, index=i)
    steps.append(logits)
  cached = jnp.concatenate(steps, axis=1)
  assert cached.shape == full.shape
  np.testing.assert_allclose(cached, full, atol=1e-5, rtol=0)


def greedy_without_cache(model, prompt, num_tokens):
  """Greedy decoding by full forward passes: one jitted pass per token over a fixed-length buffer (causal,
  so the padding after position t never changes logits at t)."""
  b, p = prompt.shape
  graphdef, state = nnx.split(model)
  full = jax.jit(lambda state, tokens: nnx.merge(graphdef, state)(tokens))
  tokens = np.zeros((b, p + num_tokens), np.int32)
  tokens[:, :p] = prompt
  for t in range(p, p + num_tokens):
    tokens[:, t] = np.argmax(np.asarray(full(state, tokens))[:, t - 1], axis=-1)
  return tokens


def test_sampling_is_seeded_and_honours_temperature_and_top_k():
  model = tiny()
  prompt = np.asarray(random_tokens((2, 6), seed=3))
  a = generate(model, prompt, 30, rng=jax.random.key(7), temperature=1.0, top_k=5)
  b = generate(model, prompt, 30, rng=jax.random.key(7), temperature=1.0, top_k=5)
  c = generate(model, prompt, 30, rng=jax.random.key(8), temperature=1.0, top_k=5)
  np.testing.assert_array_equal(a, b)  # same seed, same text
  assert not np.array_equal(a, c)
  np.testing.assert_array_equal(a[:, :6], prompt)
  # top_k: every sampled token is among the k most likely under a full (uncached) forward pass.
  logits = np.asarray(model(jnp.asarray(a[:, :-1])))[:, 5:]
  ranks = (logits > np.take_along_axis(logits, a[:, 6:, None], -1)).sum(-1)
  assert ranks.max() < 5
  # top_k=1 and temperature 0 are both greedy decoding, and agree with argmax over full passes.
  greedy = greedy_without_cache(model, prompt, 30)
  np.testing.assert_array_equal(generate(model, prompt, 30, rng=jax.random.key(1), top_k=1), greedy)
  np.testing.assert_array_equal(generate(model, prompt, 30, rng=jax.random.key(2), temperature=0.0), greedy)


def test_sample_logits_follows_the_tempered_distribution():
  logits = jnp.array([2.0, 1.0, 0.0, -1.0])
  keys = jax.random.split(jax.random.key(0), 20000)
  for temperature in (0.5, 2.0):
    draws = np.asarray(jax.vmap(lambda k: sample_logits(logits, k, temperature))(keys))
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, jax.nn.softmax(logits / temperature), atol=0.015)
  top2 = np.asarray(jax.vmap(lambda k: sample_logits(logits, k, 1.0, top_k=2))(keys))
  assert set(np.unique(top2)) == {0, 1}
  assert np.mean(top2 == 0) == pytest.approx(float(jax.nn.sigmoid(1.0)), abs=0.015)


def test_character_windows_and_position_split():
  stream = np.arange(3000) % 251
  train_split = shakespeare.split_stream(stream.astype(np.uint8), "train")["tokens"]
  test_split = shakespeare.split_stream(stream.astype(np.uint8), "test")["tokens"]
  assert train_split.shape[1] == test_split.shape[1] == shakespeare.WINDOW
  assert train_split[1, 0] == stream[shakespeare.TRAIN_STRIDE]
  cut = 2700  # the last 10% of the positions is the test split
  assert train_split[-1, -1] == stream[cut - 1 - (cut - 257) % 32]
  assert test_split[0, 0] == stream[cut] and (test_split[1:, 0] == test_split[:-1, -1]).all()
  assert shakespeare.decode(shakespeare.encode(TEXT)) == TEXT


@pytest.fixture(scope="module")
def shakespeare_splits():
  return get_split("shakespeare", "train"), get_split("shakespeare", "test")


def test_shakespeare_is_the_gutenberg_text(shakespeare_splits):
  train_split, test_split = (s["tokens"] for s in shakespeare_splits)
  assert train_split.dtype == np.uint8 and train_split.shape == (142226, 257)
  assert test_split.shape == (1975, 257)
  text = shakespeare.decode(train_split[:, :32].ravel())  # the start of every 32-character stride
  assert text.startswith("ALL'S WELL THAT ENDS WELL") and "Hamlet" in text
  assert len(np.unique(train_split)) == 84  # printable ASCII and newlines only


def test_smoke_config_trains_on_8_devices_and_logs_a_text_sample(tmp_path_factory, shakespeare_splits):
  run = helpers.smoke_run(tmp_path_factory, "shakespeare_gpt")  # trained in a test process: 8 devices
  final, workdir = run.final, run.workdir
  assert jax.device_count() == 8
  assert set(final) == {"loss", "perplexity", "bits_per_token"} and final["loss"] < np.log(256)
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "summaries" in r] == [3, 6]
  assert all(r["summaries"] == ["samples/text"] for r in rows if "summaries" in r)
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  events = EventAccumulator(str(workdir / "tensorboard"), size_guidance={"tensors": 0}).Reload()
  tag = next(t for t in events.Tags()["tensors"] if t.startswith("samples/text"))
  texts = [e.tensor_proto.string_val[0].decode() for e in events.Tensors(tag)]
  assert len(texts) == 2 and all(len(t) > 32 for t in texts)
  prompt = shakespeare.decode(shakespeare_splits[1]["tokens"][0, :8])  # the first validation characters
  assert texts[0].startswith("    " + prompt.split("\n")[0])  # indented: a markdown code block


def test_generation_past_block_size_slides_the_window_like_full_passes_over_it():
  """Past block_size tokens the context keeps its last block_size // 2 tokens and goes on: greedy tokens equal
  argmax of full (uncached) passes over exactly that window."""
  model = tiny(block_size=16)
  prompt = np.asarray(random_tokens((2, 10), seed=4))
  got = generate(model, prompt, 40, rng=jax.random.key(0), temperature=0.0)
  full = jax.jit(lambda tokens: model(tokens))
  want, start = prompt.copy(), 0
  for _ in range(40):
    logits = np.asarray(full(jnp.asarray(want[:, start:])))[:, -1]
    want = np.concatenate([want, logits.argmax(-1)[:, None].astype(np.int32)], 1)
    if want.shape[1] - start > 16:
      start = want.shape[1] - 8
  np.testing.assert_array_equal(got, want)
