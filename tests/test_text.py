"""Text classification: cleaning, tokenizers, sources, the RNN and Transformer models, and the text configs."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from research import config as config_lib
from research.data import clean, get_split, imdb, ops, rotten_tomatoes, text, tokenizers
from research.errors import ConfigError, DataUnavailableError
from research.models.layers.attention import MultiHeadAttention, sinusoidal_positions
from research.models.rnn import MaskedRNN, RNNClassifier
from research.models.transformer import TransformerClassifier
from research.train.evaluate import evaluate_checkpoint
from research.train.loop import train
from tests import helpers

TEXTS = np.array([
    "A <b>great</b> film &amp; a fine cast.", "Terrible.  Just   terrible!", None, "   ",
    "ＦＵＬＬＷＩＤＴＨ letters", "a great film & a fine cast.", "Terrible. Just terrible!", float("nan"),
    "Don't miss it: café society, 1990s style.", "line one<br /><br />line two",
], dtype=object)
LABELS = np.arange(len(TEXTS), dtype=np.int32)


# --- Cleaning. ------------------------------------------------------------------------------------------


def test_normalize_text_nfkc_lowercase_and_markup():
  assert text.normalize_one("A <b>great</b> film &amp; a fine cast.") == "a great film & a fine cast."
  assert text.normalize_one("ＦＵＬＬＷＩＤＴＨ ﬁ") == "fullwidth fi"  # NFKC folds width and ligatures
  assert text.normalize_one("line one<br /><br />line two\n\tend") == "line one line two end"
  assert text.normalize_one("x < y and y > z") == "x < y and y > z"  # not markup: left alone
  assert text.normalize_one("Keep Case", lowercase=False, strip_markup=False) == "Keep Case"


def test_cleaners_drop_empty_dedupe_and_normalize_whole_splits():
  arrays = {"text": TEXTS, "label": LABELS}
  dropped = clean.apply("drop_empty", arrays)
  assert dropped["label"].tolist() == [0, 1, 4, 5, 6, 8, 9]
  deduped = clean.apply("drop_empty|dedupe", arrays)
  assert deduped["label"].tolist() == [0, 1, 4, 5, 6, 8, 9]  # exact duplicates only: none yet
  cleaned = clean.apply("normalize_text|drop_empty|dedupe", arrays)
  assert cleaned["label"].tolist() == [0, 1, 4, 8, 9]  # after normalization, 5 and 6 repeat 0 and 1
  assert cleaned["text"].tolist() == ["a great film & a fine cast.", "terrible. just terrible!", "fullwidth letters",
                                      "don't miss it: café society, 1990s style.", "line one line two"]
  assert cleaned["text"].dtype == object and cleaned["label"].dtype == np.int32
  with pytest.raises(ConfigError, match="Unknown cleaning op 'dedup'"):
    clean.parse("dedup")


def test_normalize_text_is_also_a_per_batch_op():
  batch = ops.build("normalize_text")({"text": np.array(["<i>Hi</i> THERE"], dtype=object), "label": LABELS[:1]})
  assert batch["text"].tolist() == ["hi there"] and batch["label"].tolist() == [0]


def test_text_cache_layout_round_trips_unicode():
  strings = ["", "café", "日本語 text", "emoji 🎬", "a\nb"]
  data, offsets = text.encode_utf8(strings)
  assert data.dtype == np.uint8 and offsets.shape == (6,)
  assert text.decode_utf8(data, offsets).tolist() == strings


# --- Tokenizers. ----------------------------------------------------------------------------------------

CORPUS = np.array([
    "the movie was great and the acting was superb",
    "a dull, lifeless film with a terrible script",
    "great fun from start to finish",
    "the worst film of the year",
    "an unexpected delight, warm and funny",
    "i could not stop yawning",
    "superb direction, great cast, a fine movie",
    "terrible pacing and a dull story",
] * 4, dtype=object)


@pytest.mark.parametrize("kind,vocab_size", [("char", 40), ("bpe", 300), ("wordpiece", 120)])
def test_tokenize_shapes_round_trip_and_reload(tmp_path, kind, vocab_size):
  spec = f"tokenize(kind={kind!r}, vocab_size={vocab_size}, max_length=24, min_frequency=1)"
  arrays = {"text": CORPUS, "label": np.arange(len(CORPUS), dtype=np.int32)}
  preprocess = ops.build(spec, fit_on=arrays, assets_dir=tmp_path)
  batch = preprocess({k: v[:6] for k, v in arrays.items()})
  assert set(batch) == {"tokens", "token_mask", "label"}  # the strings are gone
  assert batch["tokens"].shape == (6, 24) and batch["tokens"].dtype == np.int32
  assert batch["token_mask"].shape == (6, 24) and batch["token_mask"].dtype == np.int32
  assert np.all((batch["tokens"] == tokenizers.PAD_ID) == (batch["token_mask"] == 0))
  assert batch["tokens"].max() < vocab_size
  state = json.loads((tmp_path / ops.STATE_FILE).read_text())["0:tokenize"]
  assert state["kind"] == kind and state["vocab_size"] <= vocab_size and (tmp_path / state["file"]).exists()

  tokenizer = tokenizers.load(tmp_path / "tokenizer.json")
  sentence = "The Movie was GREAT and funny"
  ids = tokenizer.encode(sentence).ids
  decoded = tokenizers.decode(tokenizer, ids)
  if kind in ("char", "bpe"):
    assert decoded == sentence.lower()  # exact, after the tokenizer's own lowercasing
  assert tokenizer.encode(decoded).ids == ids  # every kind: the decoded text encodes to the same ids

  reloaded = ops.build(spec, fit_on=None, assets_dir=tmp_path)  # resume / evaluate / export: no refit
  np.testing.assert_array_equal(reloaded({k: v[:6] for k, v in arrays.items()})["tokens"], batch["tokens"])
  copy = tmp_path / "copy"  # another workdir whose tokenizer file was edited after training
  shutil.copytree(tmp_path, copy, ignore=shutil.ignore_patterns("copy"))
  (copy / "tokenizer.json").write_text((copy / "tokenizer.json").read_text().replace("[UNK]", "[UNX]"))
  with pytest.raises(ConfigError, match="changed since the run was trained"):
    ops.build(spec, fit_on=None, assets_dir=copy)({k: v[:1] for k, v in arrays.items()})


def test_tokenize_truncates_either_side_and_masks_padding(tmp_path):
  arrays = {"text": CORPUS}
  long = {"text": np.array(["great film, terrible", "dull"], dtype=object)}
  right = ops.build("tokenize(kind='char', vocab_size=40, max_length=5)", fit_on=arrays,
                    assets_dir=tmp_path / "r")(long)
  left = ops.build("tokenize(kind='char', vocab_size=40, max_length=5, truncation_side='left')", fit_on=arrays,
                   assets_dir=tmp_path / "l")(long)
  tok = tokenizers.load(tmp_path / "r/tokenizer.json")
  assert tokenizers.decode(tok, right["tokens"][0]) == "great" and tokenizers.decode(tok, left["tokens"][0]) == "rible"
  assert right["token_mask"].tolist() == [[1] * 5, [1, 1, 1, 1, 0]]
  assert right["tokens"][1, 4] == tokenizers.PAD_ID
  with pytest.raises(ConfigError, match="unknown kind 'sentencepiece'"):
    ops.build("tokenize(kind='sentencepiece')", fit_on=arrays, assets_dir=tmp_path / "x")


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_fitting_is_deterministic(kind):
  first, second = (tokenizers.train(CORPUS, kind, 300, min_frequency=1) for _ in range(2))
  assert first.to_str() == second.to_str()


# --- Sources. -------------------------------------------------------------------------------------------


def test_rotten_tomatoes_offline_copy_is_real_and_split_by_film():
  train_split, test_split = get_split("rotten_tomatoes", "train"), get_split("rotten_tomatoes", "test")
  assert len(train_split["label"]) == 11_674 and len(test_split["label"]) == 1_134
  for split in (train_split, test_split):
    assert split["text"].dtype == object and isinstance(split["text"][0], str)
    assert split["label"].dtype == np.int32 and set(np.unique(split["label"])) == {0, 1}
  assert 0.5 < train_split["label"].mean() < 0.65  # 58% fresh
  assert any("&amp;" in t for t in train_split["text"])  # raw: cleaning is the config's job


def test_hub_conversion_of_a_text_dataset():
  datasets = pytest.importorskip("datasets")
  ds = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": [1, 0]})
  arrays = rotten_tomatoes.from_hub(ds)
  assert arrays["text"].dtype == object and arrays["text"].tolist() == ["good", "bad"]
  assert arrays["label"].dtype == np.int32 and arrays["label"].tolist() == [1, 0]


def test_imdb_has_no_offline_copy_and_says_so(tmp_path, monkeypatch):
  monkeypatch.setenv("RESEARCH_DATA_DIR", str(tmp_path))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(DataUnavailableError, match="no offline copy of IMDB exists") as error:
    get_split("imdb", "train")
  assert imdb.HUB_REPO in str(error.value)


# --- Models. --------------------------------------------------------------------------------------------


def _tokens(batch=4, length=12, vocab=50, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, vocab, (batch, length)).astype(np.int32)
  lengths = np.array([length, 7, 1, 4][:batch])
  tokens[np.arange(length)[None, :] >= lengths[:, None]] = 0
  return tokens


MODELS = {
    "lstm-bi-last": lambda: RNNClassifier(50, 3, cell="lstm", embed_dim=16, hidden_size=16, pooling="last",
                                          rngs=nnx.Rngs(0)),
    "gru-2layers-max": lambda: RNNClassifier(50, 3, cell="gru", embed_dim=16, hidden_size=16, num_layers=2,
                                             pooling="max", dropout=0.1, rngs=nnx.Rngs(0)),
    "lstm-uni-mean": lambda: RNNClassifier(50, 3, cell="lstm", embed_dim=16, hidden_size=16, bidirectional=False,
                                           pooling="mean", rngs=nnx.Rngs(0)),
    "transformer-learned-mean": lambda: TransformerClassifier(50, 3, dim=16, num_heads=2, num_layers=2, mlp_dim=32,
                                                              max_length=20, rngs=nnx.Rngs(0)),
    "transformer-sinusoidal-cls": lambda: TransformerClassifier(50, 3, dim=16, num_heads=2, num_layers=2,
                                                                mlp_dim=32, positions="sinusoidal", pooling="cls",
                                                                rngs=nnx.Rngs(0)),
}


def _jitted(module):
  """`module(tokens, mask=None)` in evaluation mode, compiled once per shape (eager NNX dispatch is slow)."""
  graphdef, state = nnx.split(module)
  apply = jax.jit(lambda state, tokens, mask: nnx.merge(graphdef, state)(tokens, mask))
  return lambda tokens, mask=None: apply(state, tokens, mask)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_shapes_dtypes_and_padding_invariance(name):
  model = _jitted(MODELS[name]())
  tokens = _tokens()
  logits = model(jnp.asarray(tokens))
  assert logits.shape == (4, 3) and logits.dtype == jnp.float32
  padded = np.concatenate([tokens, np.zeros((4, 8), np.int32)], axis=1)  # 8 more padding tokens
  np.testing.assert_allclose(model(jnp.asarray(padded)), logits, atol=1e-5)
  # An explicit mask gives the same as the default `tokens != 0`; junk under the mask changes nothing.
  junk = np.where(padded == 0, 7, padded)
  np.testing.assert_allclose(model(jnp.asarray(junk), jnp.asarray(padded != 0)), logits, atol=1e-5)
  assert not np.allclose(model(jnp.asarray(junk)), logits, atol=1e-3)  # the mask is what hides it


def test_masked_rnn_carries_state_over_padding_and_reverse_reads_right_to_left():
  rnn = MaskedRNN("gru", 3, 4, rngs=nnx.Rngs(0))
  backward = MaskedRNN("gru", 3, 4, reverse=True, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 5, 3)), jnp.float32)
  mask = jnp.array([[True, True, True, False, False]])
  outputs, last = rnn(x, mask)
  np.testing.assert_array_equal(outputs[0, 3:], 0.0)
  np.testing.assert_allclose(last, outputs[:, 2], atol=1e-6)
  short_out, short_last = rnn(x[:, :3], jnp.ones((1, 3), bool))
  np.testing.assert_allclose(short_last, last, atol=1e-6)
  back_out, back_last = backward(x, mask)
  flipped_out, flipped_last = backward(x[:, :3], jnp.ones((1, 3), bool))
  np.testing.assert_allclose(back_last, flipped_last, atol=1e-6)
  np.testing.assert_allclose(back_out[:, :3], flipped_out, atol=1e-6)
  np.testing.assert_allclose(back_last, back_out[:, 0], atol=1e-6)  # right to left: ends at the first token


def test_attention_ignores_masked_keys_and_positions_are_sinusoids():
  attention = MultiHeadAttention(8, 2, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 8)), jnp.float32)
  mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
  changed = x.at[0, 3:].set(100.0)  # masked keys: any values
  np.testing.assert_allclose(attention(changed, mask)[0, :3], attention(x, mask)[0, :3], atol=1e-5)
  table = sinusoidal_positions(6, 4)
  np.testing.assert_allclose(table[3], [np.sin(3), np.cos(3), np.sin(3 / 100), np.cos(3 / 100)], atol=1e-6)


@pytest.mark.parametrize("name", ["lstm-bi-last", "gru-2layers-max", "transformer-learned-mean",
                                  "transformer-sinusoidal-cls"])
def test_model_overfits_one_small_batch(name):
  model = MODELS[name]()
  tokens, labels = jnp.asarray(_tokens(seed=1)), jnp.array([0, 1, 2, 1])
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, key):
    def loss_fn(params):
      logits = nnx.merge(graphdef, params, rest)(tokens, train=True, rngs=nnx.Rngs(dropout=key))
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  for i in range(150):
    params, opt_state, loss = step(params, opt_state, jax.random.key(i))
  logits = nnx.merge(graphdef, params, rest)(tokens)
  final = float(optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean())
  assert final < 0.05, final
  assert np.array_equal(np.argmax(logits, -1), labels)


# --- Configs. -------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["rotten_tomatoes_lstm", "rotten_tomatoes_transformer"])
def test_smoke_config_trains_on_8_devices_and_evaluate_reloads_the_tokenizer(tmp_path_factory, tmp_path, name):
  assert jax.device_count() == 8
  run = helpers.smoke_run(tmp_path_factory, name)  # trained in a test process: 8 devices
  final, workdir = run.final, run.workdir
  assert 0.0 <= final["accuracy"] <= 1.0 and np.isfinite(final["loss"])
  assert (workdir / "tokenizer.json").exists()
  again = evaluate_checkpoint(workdir)["metrics"]  # a fresh preprocessor: reads the saved tokenizer
  assert again["accuracy"] == pytest.approx(final["accuracy"], abs=1e-6)
  assert again["loss"] == pytest.approx(final["loss"], rel=1e-5)
  pytest.importorskip("jax2onnx")
  from research.export import export

  out = export(workdir, formats="onnx", out=tmp_path / "export", accuracy_examples=64,
               log=lambda message: None)  # parity-checked
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["inputs"][0]["name"] == "tokens" and (out / "assets/tokenizer.json").exists()


@pytest.mark.parametrize("name", ["imdb_lstm", "imdb_transformer"])
def test_imdb_smoke_configs_fail_with_the_no_offline_copy_error(tmp_path, monkeypatch, name):
  monkeypatch.setenv("RESEARCH_DATA_DIR", str(tmp_path / "data"))
  config = config_lib.load(f"configs/{name}.py:smoke")
  with pytest.raises(DataUnavailableError, match="no offline copy of IMDB exists"):
    train(config, tmp_path / "run")
