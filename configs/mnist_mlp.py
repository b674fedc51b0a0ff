"""MLP 784-512-256-10 on real MNIST: >= 98% test accuracy in about a minute on 2 CPU cores.

    python scripts/train.py --config configs/mnist_mlp.py --workdir runs/mnist_mlp

`configs/mnist_mlp.py:smoke` is a tiny variant (a few steps) for tests.
"""

import ml_collections


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = dict(
      name="mnist",
      input_key="image",
      preprocess="normalize(0.1307, 0.3081)|flatten",  # host ops, research/data/ops.py
      augment="",  # on-device train-time ops, research/data/augment.py, e.g. "random_crop(pad=2)"
      batch_size=128,
      eval_batch_size=1000,
      shuffle=True,
  )
  config.model = dict(name="mlp", hidden_sizes=(512, 256), num_classes=10, dropout=0.0, activation="relu")
  config.label_smoothing = 0.0
  config.optimizer = dict(name="adam", learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                          clip_norm=0.0, momentum=0.9)
  config.schedule = dict(name="warmup_cosine", warmup_steps=200, end_factor=0.0, boundaries=(), factor=0.1)
  # steps > 0 overrides epochs. stop_after_steps > 0 ends this invocation early with a checkpoint
  # (for jobs with a time limit); rerunning continues the same run.
  # early_stopping_patience > 0 stops after that many evals without improving checkpoint.best_metric.
  config.train = dict(epochs=10, steps=0, log_every=100, eval_every=1000, stop_after_steps=0,
                      early_stopping_patience=0)
  # Keep the last `keep` checkpoints, plus the `keep_best` best by eval `best_metric` ("" = off).
  config.checkpoint = dict(every=1000, keep=3, best_metric="", best_mode="max", keep_best=1)
  config.nan_policy = "stop"  # or "skip": a step with a non-finite loss/gradient is never applied.
  config.compilation_cache = ""  # "" = WORKDIR/cache/jax; a directory to share between runs; or "off".
  config.init_from = ""  # "WORKDIR[:STEP]": start from another run's parameters (fresh optimizer).
  config.parallel = dict(strategy="auto")
  config.mesh = dict(data=-1)

  if arg == "smoke":
    config.data.batch_size = 64
    config.data.eval_batch_size = 1000
    config.train.update(dict(epochs=0, steps=20, log_every=5, eval_every=10))
    config.checkpoint.every = 10
  elif arg:
    raise ValueError(f"configs/mnist_mlp.py knows the variant 'smoke', not {arg!r}.")
  return config
