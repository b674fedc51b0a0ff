"""Metrics as sums of counts, so they accumulate exactly across batches and devices.

A batch contributes a dict of sums (e.g. loss_sum, correct, count); batches are
added key by key (`add`, or `jax.lax.psum` across devices); `summarize` turns
the totals into reported numbers at the end. Never a mean of means.

Sum keys that `summarize` understands::

| key(s) | reported |
|---|---|
| `<name>_sum`, `count` | `<name>` = sum / count (e.g. `loss`, `top5_accuracy`) |
| `correct`, `count` | `accuracy` |
| `confusion` float[C, C] (rows: true class, columns: predicted) | `precision_macro`, `recall_macro`, `f1_macro` |
| `token_nll`, `token_count` | `perplexity` = exp(token_nll / token_count) |
| `bleu_correct`, `bleu_total` float[4], `bleu_hyp_len`, `bleu_ref_len` | `bleu` (corpus BLEU, 0-100) |

Per-class precision / recall / F1 come from `precision_recall_f1(confusion)`.
A row per class, with its support: `classification_report(confusion, class_names)`.
Device-side sums are jax functions of a batch; BLEU's n-gram counts are
computed on the host (`bleu_sums`), from token sequences.
"""

from __future__ import annotations

import collections
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def classification_sums(logits: jax.Array, labels: jax.Array, per_example_loss: jax.Array,
                        mask: jax.Array | None = None, *, confusion: bool = False,
                        top_k: Sequence[int] = ()) -> dict[str, jax.Array]:
  """loss_sum, correct, count of a batch (rows where `mask` is 0 do not count); with `confusion=True`
  also the confusion matrix, and `top{k}_accuracy_sum` for each k in `top_k`."""
  if mask is None:
    mask = jnp.ones(labels.shape, jnp.float32)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  sums = {"loss_sum": jnp.sum(per_example_loss * mask), "correct": jnp.sum(correct * mask),
          "count": jnp.sum(mask)}
  if confusion:
    sums["confusion"] = confusion_matrix(jnp.argmax(logits, -1), labels, logits.shape[-1], mask)
  for k in top_k:
    sums[f"top{k}_accuracy_sum"] = top_k_correct(logits, labels, k, mask)
  return sums


def top_k_correct(logits: jax.Array, labels: jax.Array, k: int, mask: jax.Array | None = None) -> jax.Array:
  """How many rows have their label among the k highest logits (float scalar; ties count in the label's favour)."""
  true = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)
  hit = (jnp.sum(logits > true, axis=-1) < k).astype(jnp.float32)
  return jnp.sum(hit if mask is None else hit * mask)


def confusion_matrix(predictions: jax.Array, labels: jax.Array, num_classes: int,
                     mask: jax.Array | None = None) -> jax.Array:
  """float[num_classes, num_classes] counts: entry [t, p] counts rows of true class t predicted as p."""
  weights = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  flat = labels.astype(jnp.int32) * num_classes + predictions.astype(jnp.int32)
  counts = jnp.zeros(num_classes * num_classes, jnp.float32).at[flat].add(weights, mode="drop")
  return counts.reshape(num_classes, num_classes)


def precision_recall_f1(confusion) -> dict[str, np.ndarray]:
  """Per-class precision, recall and F1 (float64[C] each) from a summed confusion matrix.

  A ratio whose denominator is 0 (a class never predicted, or never present) is 0,
  as scikit-learn's `zero_division=0`. Macro averages are the plain means of these.
  """
  confusion = np.asarray(confusion, np.float64)
  tp = np.diag(confusion)
  predicted, actual = confusion.sum(0), confusion.sum(1)
  ratio = lambda a, b: np.divide(a, b, out=np.zeros_like(a), where=b > 0)
  return {"precision": ratio(tp, predicted), "recall": ratio(tp, actual), "f1": ratio(2 * tp, predicted + actual)}



def classification_report(confusion, class_names: Sequence[str] | None = None) -> list[dict]:
  """One row per class of a summed confusion matrix (rows: true class, columns: predicted):
  {"class", "precision", "recall", "f1", "support"}, as scikit-learn's `classification_report` (with
  `zero_division=0`); `support` is how many examples of the class there are. Names default to the indices."""
  confusion = np.asarray(confusion, np.float64)
  names = [str(i) for i in range(len(confusion))] if class_names is None else [str(n) for n in class_names]
  if len(names) != len(confusion):
    raise ValueError(f"{len(names)} class names for a {len(confusion)}-class confusion matrix.")
  scores = precision_recall_f1(confusion)
  support = np.rint(confusion.sum(1)).astype(np.int64)
  return [{"class": name, "precision": float(scores["precision"][i]), "recall": float(scores["recall"][i]),
           "f1": float(scores["f1"][i]), "support": int(support[i])} for i, name in enumerate(names)]

def token_nll_sums(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> dict[str, jax.Array]:
  """Summed next-token negative log-likelihood (nats) and token count, for `perplexity`.

  Inputs: logits float[..., V], integer targets [...], mask [...] (1 = a token that counts).
  """
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  weights = jnp.ones(nll.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
  return {"token_nll": jnp.sum(nll * weights), "token_count": jnp.sum(weights)}


def perplexity(token_nll, token_count) -> float:
  """exp(mean negative log-likelihood per token)."""
  return math.exp(float(token_nll) / max(float(token_count), 1.0))


def _ngrams(tokens: Sequence, max_order: int) -> collections.Counter:
  return collections.Counter(tuple(tokens[i:i + n]) for n in range(1, max_order + 1)
                             for i in range(len(tokens) - n + 1))


def _tokens(sequence) -> list:
  return sequence.split() if isinstance(sequence, str) else [int(t) if isinstance(t, np.integer) else t
                                                             for t in sequence]


def bleu_sums(hypotheses: Sequence, references: Sequence, max_order: int = 4) -> dict[str, np.ndarray]:
  """Corpus-BLEU sufficient statistics of a batch, on the host; add them across batches.

  `hypotheses[i]` is a token sequence: a str (split on whitespace) or a list of
  token ids or words. `references[i]` is one reference (a str, or a list of ids)
  or a list of references (strs, or lists of ids or words). N-gram
  matches are clipped by the most that any one reference holds, and the
  reference length is the closest to the hypothesis's (the shorter on a tie),
  as in Papineni et al. (2002) and sacrebleu.
  """
  correct, total = np.zeros(max_order), np.zeros(max_order)
  hyp_len = ref_len = 0.0
  for hypothesis, refs in zip(hypotheses, references, strict=True):
    if isinstance(refs, str) or len(refs) == 0 or not isinstance(refs[0], (str, list, tuple, np.ndarray)):
      refs = [refs]
    hyp = _tokens(hypothesis)
    ref_tokens = [_tokens(r) for r in refs]
    max_ref = collections.Counter()
    for r in ref_tokens:
      max_ref |= _ngrams(r, max_order)  # | keeps the larger count
    for gram, count in _ngrams(hyp, max_order).items():
      total[len(gram) - 1] += count
      correct[len(gram) - 1] += min(count, max_ref[gram])
    hyp_len += len(hyp)
    ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in ref_tokens)[1]
  return {"bleu_correct": correct, "bleu_total": total, "bleu_hyp_len": np.float64(hyp_len),
          "bleu_ref_len": np.float64(ref_len)}


def bleu(sums: dict, smooth: str = "exp") -> float:
  """Corpus BLEU (0-100) from summed `bleu_sums`; `smooth` is "exp" (sacrebleu's default) or "none"."""
  correct, total = np.asarray(sums["bleu_correct"], np.float64), np.asarray(sums["bleu_total"], np.float64)
  hyp_len, ref_len = float(sums["bleu_hyp_len"]), float(sums["bleu_ref_len"])
  if not correct.any():
    return 0.0
  brevity = 1.0 if hyp_len >= ref_len else (math.exp(1 - ref_len / hyp_len) if hyp_len > 0 else 0.0)
  log_precision, halvings = 0.0, 1.0
  for c, t in zip(correct, total):
    if t == 0:
      return 0.0  # no n-grams of this order at all: BLEU is 0
    if c == 0:
      if smooth != "exp":
        return 0.0
      halvings *= 2  # NIST / mteval-v13a smoothing: 1 / (2^k * total) for the k-th order without a match
      log_precision += math.log(1.0 / (halvings * t))
    else:
      log_precision += math.log(c / t)
  return 100.0 * brevity * math.exp(log_precision / len(correct))


def add(a: dict | None, b: dict) -> dict:
  return b if a is None else jax.tree.map(jnp.add, a, b)


def summarize(sums: dict) -> dict[str, float]:
  """Sums -> reported metrics, as Python floats (see the table in this module's docstring): each
  `<name>_sum` becomes `<name>` (divided by `count`), `correct` becomes `accuracy`, a confusion matrix
  gives macro precision / recall / F1, token NLL gives perplexity, BLEU counts give BLEU. A model may
  define its own `summarize(sums)`."""
  count = max(float(sums.get("count", 0.0)), 1.0)
  out = {k[:-len("_sum")]: float(v) / count for k, v in sums.items() if k.endswith("_sum")}
  if "correct" in sums:
    out["accuracy"] = float(sums["correct"]) / count
  if "confusion" in sums:
    for name, values in precision_recall_f1(sums["confusion"]).items():
      out[f"{name}_macro"] = float(np.mean(values))
  if "token_nll" in sums and "token_count" in sums:
    out["perplexity"] = perplexity(sums["token_nll"], sums["token_count"])
  if "bleu_correct" in sums:
    out["bleu"] = bleu(sums)
  return out
