"""MLP 784-512-256-10 on real MNIST: >= 98% test accuracy in about a minute on 2 CPU cores.

    python scripts/train.py --config configs/mnist_mlp.py --workdir runs/mnist_mlp

`configs/mnist_mlp.py:smoke` is a tiny variant (20 steps) for tests. Every other
field and its default: research/config.py:defaults().
"""

from research import config as config_lib


def get_config(arg=None):
  config = config_lib.defaults()
  config.data.update(name="mnist", preprocess="normalize(0.1307, 0.3081)|flatten", batch_size=128)
  config.model = dict(name="mlp", hidden_sizes=(512, 256), num_classes=10, dropout=0.0, activation="relu")
  config.optimizer.update(name="adam", learning_rate=1e-3)
  config.train.update(epochs=10, log_every=100, eval_every=1000)
  config.checkpoint.best_metric = "accuracy"  # marks the best checkpoint for --step best

  if arg == "smoke":
    config.data.batch_size = 64
    config_lib.smoke(config)
  elif arg:
    raise ValueError(f"configs/mnist_mlp.py knows the variant 'smoke', not {arg!r}.")
  return config
