"""Character-level GPT on Shakespeare (Gutenberg plays): validation loss <= 1.8 nats/char on 2 CPU cores.

    python scripts/train.py --config configs/shakespeare_gpt.py --workdir runs/shakespeare_gpt

A 4-layer, 128-wide decoder (0.8M parameters, block of 128 characters) on byte
ids; each batch is 4 windows of 257 characters = 8 sequences of 128 = 1,024
predicted characters (small batches, many steps: at this budget the run is
limited by the number of updates more than by tokens). "Validation" is the last 10% of the text, the dataset's
`test` split (research/data/shakespeare.py); eval reports loss (nats/char),
perplexity and bits per character, and TensorBoard gets a seeded text sample
(`samples/text`) at each evaluation.

Measured (offline Gutenberg copy, 1 CPU device): validation loss 1.692 nats/char
(perplexity 5.43, 2.44 bits/char) after 3,000 steps; 1.850 at step 1,500. Wall time
14:45 on 2 CPU cores shared with other jobs (the process got 0.93 cores on average,
829 CPU-seconds); the fastest logged interval ran 5.5 steps/s, i.e. about 9-10
minutes for the run with the cores to itself. The batch of 4 windows cannot be
split over more than 4 devices: raise data.batch_size (and the learning rate)
on larger meshes.

`configs/shakespeare_gpt.py:smoke` is a tiny variant (a few steps) for tests.
"""

import ml_collections


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = dict(
      name="shakespeare",
      input_key="tokens",
      preprocess="",  # the windows are byte ids already
      augment="",
      batch_size=4,  # windows of 257 characters
      eval_batch_size=128,
      shuffle=True,
  )
  config.model = dict(name="gpt", vocab_size=256, block_size=128, num_layers=4, num_heads=4, embed_dim=128,
                      mlp_ratio=4, dropout=0.0, tie_embeddings=True,
                      # The text sample logged at each evaluation: a prompt from the validation text, continued.
                      sample_prompt_length=32, sample_tokens=0, sample_temperature=0.8, sample_top_k=0)
  config.label_smoothing = 0.0
  config.optimizer = dict(name="adamw", learning_rate=2e-3, b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.01,
                          clip_norm=1.0, momentum=0.9)
  config.schedule = dict(name="warmup_cosine", warmup_steps=100, end_factor=0.1, boundaries=(), factor=0.1)
  # steps > 0 overrides epochs. stop_after_steps > 0 ends this invocation early with a checkpoint
  # (for jobs with a time limit); rerunning continues the same run.
  # early_stopping_patience > 0 stops after that many evals without improving checkpoint.best_metric.
  config.train = dict(epochs=0, steps=3000, log_every=100, eval_every=1500, stop_after_steps=0,
                      early_stopping_patience=0)
  # Keep the last `keep` checkpoints, plus the `keep_best` best by eval `best_metric` ("" = off).
  config.checkpoint = dict(every=1500, keep=2, best_metric="loss", best_mode="min", keep_best=1)
  config.nan_policy = "stop"  # or "skip": a step with a non-finite loss/gradient is never applied.
  config.compilation_cache = ""  # "" = WORKDIR/cache/jax; a directory to share between runs; or "off".
  config.compute_dtype = "float32"  # or "bfloat16": mixed precision (research/models/precision.py)
  config.init_from = ""  # "WORKDIR[:STEP]": start from another run's parameters (fresh optimizer).
  config.parallel = dict(strategy="auto")
  config.mesh = dict(data=-1)
  # XLA:CPU flags of scripts/train.py: YNNPACK may fuse reductions (LayerNorm models train faster; research/xla_flags.py)
  config.xla_profile = "fused_reductions"

  if arg == "smoke":
    config.model.update(dict(block_size=32, num_layers=1, num_heads=2, embed_dim=32, sample_prompt_length=8))
    config.data.batch_size = 16
    config.data.eval_batch_size = 512
    config.train.update(dict(epochs=0, steps=6, log_every=3, eval_every=3))
    config.checkpoint.every = 3
  elif arg:
    raise ValueError(f"configs/shakespeare_gpt.py knows the variant 'smoke', not {arg!r}.")
  return config
