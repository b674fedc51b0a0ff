"""Metrics against independent references (scikit-learn, sacrebleu, numpy) on the same inputs,
accumulated over several batches and over 8 devices as sums."""

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from research import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics")
sacrebleu = pytest.importorskip("sacrebleu")

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  n = 203  # not a multiple of the batch size: the last batch is padded and masked
  logits = rng.normal(size=(n, NUM_CLASSES)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
  labels[:40] = np.argmax(logits[:40], -1)  # some signal, so the scores are not all near chance
  labels[labels == 4] = 3  # class 4 never occurs: exercises 0/0 -> 0
  return logits, labels


def _batched_sums(logits, labels, batch_size=32):
  """Sums over batches of `batch_size`, the last padded with masked rows (as the eval pipeline does)."""
  total = None
  for start in range(0, len(labels), batch_size):
    rows = np.arange(start, start + batch_size)
    mask = (rows < len(labels)).astype(np.float32)
    rows = np.minimum(rows, len(labels) - 1)
    per_example = np.zeros(batch_size, np.float32)
    sums = metrics.classification_sums(jnp.asarray(logits[rows]), jnp.asarray(labels[rows]), per_example,
                                       jnp.asarray(mask), confusion=True, top_k=(2, 3))
    total = metrics.add(total, sums)
  return jax.device_get(total)


def test_accuracy_topk_confusion_precision_recall_f1_match_sklearn_over_batches(data):
  logits, labels = data
  sums = _batched_sums(logits, labels)
  predictions = np.argmax(logits, -1)
  classes = list(range(NUM_CLASSES))
  assert float(sums["count"]) == len(labels)
  reported = metrics.summarize(sums)
  assert reported["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(labels, predictions), abs=1e-6)
  for k in (2, 3):
    expected = sklearn_metrics.top_k_accuracy_score(labels, logits, k=k, labels=classes)
    assert reported[f"top{k}_accuracy"] == pytest.approx(expected, abs=1e-6)
  np.testing.assert_array_equal(sums["confusion"], sklearn_metrics.confusion_matrix(labels, predictions,
                                                                                    labels=classes))
  precision, recall, f1, _ = sklearn_metrics.precision_recall_fscore_support(
      labels, predictions, labels=classes, zero_division=0)
  per_class = metrics.precision_recall_f1(sums["confusion"])
  np.testing.assert_allclose(per_class["precision"], precision, atol=1e-12)
  np.testing.assert_allclose(per_class["recall"], recall, atol=1e-12)
  np.testing.assert_allclose(per_class["f1"], f1, atol=1e-12)
  for name, fn in (("precision", sklearn_metrics.precision_score), ("recall", sklearn_metrics.recall_score),
                   ("f1", sklearn_metrics.f1_score)):
    expected = fn(labels, predictions, labels=classes, average="macro", zero_division=0)
    assert reported[f"{name}_macro"] == pytest.approx(expected, abs=1e-9)


def test_sums_over_8_devices_equal_sums_over_batches(data):
  """Each device sums its shard; a psum adds them: the same totals as one pass over all rows."""
  logits, labels = data
  n = 8 * 25  # 200 rows, 25 per device
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))

  @jax.jit
  @partial(jax.shard_map, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P())
  def sums_fn(x, y):
    local = metrics.classification_sums(x, y, jnp.zeros(y.shape), confusion=True, top_k=(2,))
    local.update(metrics.token_nll_sums(x, y))
    return jax.lax.psum(local, "data")

  on_devices = jax.device_get(sums_fn(jnp.asarray(logits[:n]), jnp.asarray(labels[:n])))
  one_pass = metrics.classification_sums(jnp.asarray(logits[:n]), jnp.asarray(labels[:n]), jnp.zeros(n),
                                         confusion=True, top_k=(2,))
  one_pass.update(metrics.token_nll_sums(jnp.asarray(logits[:n]), jnp.asarray(labels[:n])))
  for key, value in jax.device_get(one_pass).items():
    np.testing.assert_allclose(on_devices[key], value, rtol=1e-5, err_msg=key)
  predictions = np.argmax(logits[:n], -1)
  np.testing.assert_array_equal(on_devices["confusion"],
                                sklearn_metrics.confusion_matrix(labels[:n], predictions, labels=range(NUM_CLASSES)))


def test_perplexity_is_exp_of_the_mean_token_nll():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 7, 11)).astype(np.float32)
  targets = rng.integers(0, 11, (3, 7))
  mask = (rng.random((3, 7)) > 0.3).astype(np.float32)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
  expected = math.exp(float((nll * mask).sum() / mask.sum()))
  total = None
  for b in range(3):  # one sequence per batch, accumulated
    total = metrics.add(total, metrics.token_nll_sums(jnp.asarray(logits[b:b + 1]), jnp.asarray(targets[b:b + 1]),
                                                      jnp.asarray(mask[b:b + 1])))
  assert metrics.summarize(jax.device_get(total))["perplexity"] == pytest.approx(expected, rel=1e-5)
  uniform = metrics.token_nll_sums(jnp.zeros((2, 4, 11)), jnp.zeros((2, 4), jnp.int32))
  assert metrics.perplexity(uniform["token_nll"], uniform["token_count"]) == pytest.approx(11.0, rel=1e-5)


HYPOTHESES = [
    "the cat sat on the mat",
    "there is a cat on the mat",
    "a quick brown fox jumps over the lazy dog",
    "hello world",
    "completely unrelated words here",
    "the the the the",
    "it is raining cats and dogs today in the city",
]
REFERENCES = [
    "the cat is on the mat",
    "there is a cat on the mat",
    "the quick brown fox jumped over the lazy dog",
    "hello there world",
    "nothing in common at all",
    "the cat",
    "it rains cats and dogs in the city today",
]
SECOND_REFERENCES = [
    "a cat is sitting on the mat",
    "a cat is on the mat",
    "a fast brown fox leaps over a lazy dog",
    "hello world",
    "something else",
    "the cat sat",
    "today it is raining heavily in the city",
]


def _accumulated_bleu(hypotheses, references, batch_size=3, smooth="exp"):
  total = None
  for start in range(0, len(hypotheses), batch_size):
    total = metrics.add(total, metrics.bleu_sums(hypotheses[start:start + batch_size],
                                                 references[start:start + batch_size]))
  return metrics.bleu(total, smooth=smooth), metrics.summarize(total)["bleu"]


def test_corpus_bleu_matches_sacrebleu_over_batches():
  expected = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES], tokenize="none").score
  score, reported = _accumulated_bleu(HYPOTHESES, REFERENCES)
  assert score == pytest.approx(expected, abs=1e-9) and reported == pytest.approx(expected, abs=1e-9)
  expected_none = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES], tokenize="none", smooth_method="none").score
  assert _accumulated_bleu(HYPOTHESES, REFERENCES, smooth="none")[0] == pytest.approx(expected_none, abs=1e-9)


def test_corpus_bleu_with_two_references_and_token_ids_matches_sacrebleu():
  expected = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES, SECOND_REFERENCES], tokenize="none").score
  both = [[a, b] for a, b in zip(REFERENCES, SECOND_REFERENCES)]
  assert _accumulated_bleu(HYPOTHESES, both)[0] == pytest.approx(expected, abs=1e-9)
  vocab = {w: i for i, w in enumerate(sorted({w for s in HYPOTHESES + REFERENCES for w in s.split()}))}
  ids = lambda texts: [np.array([vocab[w] for w in t.split()]) for t in texts]
  single = sacrebleu.corpus_bleu(HYPOTHESES, [REFERENCES], tokenize="none").score
  assert _accumulated_bleu(ids(HYPOTHESES), ids(REFERENCES))[0] == pytest.approx(single, abs=1e-9)


def test_bleu_edge_cases_match_sacrebleu():
  for hyps, refs in ((["a b c d"], ["a b c d"]), (["x y"], ["a b c"]), (["a"], ["a b c d e"]),
                     (["a b c"], ["a b c d e f g"])):
    expected = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none").score
    assert metrics.bleu(metrics.bleu_sums(hyps, refs)) == pytest.approx(expected, abs=1e-9), (hyps, refs)


def test_summarize_keeps_the_loop_convention():
  sums = {"loss_sum": np.float32(6.0), "correct": np.float32(3.0), "count": np.float32(4.0)}
  assert metrics.summarize(sums) == {"loss": 1.5, "accuracy": 0.75}
