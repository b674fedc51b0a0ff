"""Bidirectional LSTM on IMDB movie reviews (25,000 train / 25,000 test), from scratch. Hub only.

    python scripts/train.py --config configs/imdb_lstm.py --workdir runs/imdb_lstm

The model of configs/rotten_tomatoes_lstm.py, for IMDB's long reviews: a larger vocabulary
and 256 tokens per review, keeping each review's end (where the verdict usually is). IMDB loads
only from the HF hub (`stanfordnlp/imdb`, cached after the first load): no real offline copy
exists, and without the hub the run stops at once with an error that says so. This project's
machines cannot reach the hub, so this config has not been trained here; its smoke test checks
that error. `configs/imdb_lstm.py:smoke` is a tiny variant (8 steps) for tests.
"""

from research import config as config_lib

VOCAB_SIZE = 16000  # the tokenizer's ids are all below it; the embedding table has this many rows
MAX_LENGTH = 256  # tokens per review after padding / truncation (reviews average ~300)


def get_config(arg=None):
  config = config_lib.defaults()
  config.data.update(
      name="imdb",
      input_key="tokens",
      clean="normalize_text|drop_empty|dedupe",  # research/data/text.py
      preprocess=f"tokenize(kind='bpe', vocab_size={VOCAB_SIZE}, max_length={MAX_LENGTH}, truncation_side='left')",
      batch_size=64,
      eval_batch_size=512,
  )
  config.model = dict(name="rnn", vocab_size=VOCAB_SIZE, num_classes=2, cell="lstm", embed_dim=128,
                      hidden_size=64, num_layers=1, bidirectional=True, pooling="max", dropout=0.5, pad_id=0)
  config.optimizer.update(name="adamw", learning_rate=2e-3, weight_decay=1e-2, clip_norm=1.0)
  config.schedule.warmup_steps = 100
  config.train.update(epochs=4, log_every=50, eval_every=500)
  config.checkpoint.update(every=500, best_metric="accuracy")

  if arg == "smoke":
    config.data.preprocess = "tokenize(kind='bpe', vocab_size=500, max_length=32)"
    config.model.update(vocab_size=500, embed_dim=16, hidden_size=16)
    config_lib.smoke(config, steps=8)
  elif arg:
    raise ValueError(f"configs/imdb_lstm.py knows the variant 'smoke', not {arg!r}.")
  return config
