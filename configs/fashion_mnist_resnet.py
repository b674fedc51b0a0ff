"""CIFAR-style ResNet on real Fashion-MNIST (28x28 grayscale): >= 92.0% test accuracy.

    python scripts/train.py --config configs/fashion_mnist_resnet.py --workdir runs/fashion_mnist_resnet

ResNet-8 (3 stages of 1 basic block, widths 16/32/64) with random flips,
label smoothing 0.1, Nesterov SGD, 8 epochs (3,744 steps); the measured accuracy and wall time on 2 CPU cores are in
the README's model-zoo table. `--config.model.depth=20` gives ResNet-20 (about
3x the time per step). `configs/fashion_mnist_resnet.py:smoke` is a tiny variant
(6 steps) for tests. Every other field and its default: research/config.py:defaults().
"""

from research import config as config_lib


def get_config(arg=None):
  config = config_lib.defaults()
  config.data.update(name="fashion_mnist",
                     preprocess="standardize",  # per-channel mean/std of the train split, saved in the workdir
                     augment="flip_lr", batch_size=128)  # train steps only
  # depth 6n+2 (8, 14, 20, 56, ...): 3 stages of n basic blocks, widths width, 2*width, 4*width.
  config.model = dict(name="resnet", depth=8, width=16, num_classes=10, dropout=0.0, bn_momentum=0.9,
                      zero_init_residual=True)
  config.label_smoothing = 0.1
  config.optimizer.update(name="nesterov", learning_rate=0.1, momentum=0.9, weight_decay=5e-4)
  config.train.update(epochs=8, log_every=100, eval_every=0)  # eval_every=0: evaluate at the end
  config.checkpoint.update(every=500, keep=2, best_metric="accuracy")

  if arg == "smoke":
    config.model.update(depth=8, width=4)
    config.data.batch_size = 64
    config_lib.smoke(config, steps=6)
  elif arg:
    raise ValueError(f"configs/fashion_mnist_resnet.py knows the variant 'smoke', not {arg!r}.")
  return config
