"""The benchmark's three architectures in Keras 3 and PyTorch, layer for layer as the library builds them.

research/bench/train.py sizes them (`SPECS`); the library's side is its own
`mlp`, `cnn` and `transformer` models. Each function returns examples/s of
steady-state training (after a warm-up) with Adam at 1e-3, float32.
"""

from __future__ import annotations

import os
import time

import numpy as np


def keras_model(name: str, spec: dict):
  os.environ["KERAS_BACKEND"] = "jax"  # before the first `import keras`
  import keras
  from keras import layers

  m = spec["model"]
  if name == "mlp":
    inputs = keras.Input(spec["input_shape"])
    x = inputs
    for width in m["hidden_sizes"]:
      x = layers.Dense(width, activation="relu")(x)
    return keras.Model(inputs, layers.Dense(m["num_classes"])(x))
  if name == "cnn":
    inputs = keras.Input(spec["input_shape"])
    x = inputs
    for channels in m["channels"]:
      x = layers.Conv2D(channels, m["kernel_size"], padding="same", use_bias=False)(x)
      x = layers.ReLU()(layers.BatchNormalization(momentum=m["bn_momentum"])(x))
      x = layers.MaxPooling2D(2)(x)
    x = layers.Dense(m["hidden_size"], activation="relu")(layers.Flatten()(x))
    return keras.Model(inputs, layers.Dense(m["num_classes"])(x))
  if name == "transformer":

    class AddPositions(layers.Layer):
      def build(self, shape):
        self.table = self.add_weight(shape=shape[1:], initializer=keras.initializers.RandomNormal(stddev=0.02))

      def call(self, x):
        return x + self.table

    inputs = keras.Input(spec["input_shape"], dtype="int32")
    x = AddPositions()(layers.Embedding(m["vocab_size"], m["dim"])(inputs))
    for _ in range(m["num_layers"]):
      y = layers.LayerNormalization(epsilon=1e-6)(x)
      x = x + layers.MultiHeadAttention(m["num_heads"], m["dim"] // m["num_heads"])(y, y)
      y = layers.LayerNormalization(epsilon=1e-6)(x)
      y = layers.Dense(m["mlp_dim"], activation=lambda t: keras.activations.gelu(t, approximate=True))(y)
      x = x + layers.Dense(m["dim"])(y)
    x = layers.GlobalAveragePooling1D()(layers.LayerNormalization(epsilon=1e-6)(x))
    return keras.Model(inputs, layers.Dense(m["num_classes"])(x))
  raise ValueError(f"no Keras version of {name!r}")


def keras_jax(name: str, spec: dict, x: np.ndarray, y: np.ndarray, steps: int,
              compute_dtype: str = "float32") -> float:
  os.environ["KERAS_BACKEND"] = "jax"  # before the first `import keras`
  import keras

  if compute_dtype == "bfloat16":
    keras.mixed_precision.set_global_policy("mixed_bfloat16")  # before the layers are built
  net = keras_model(name, spec)

  net.compile(optimizer=keras.optimizers.Adam(1e-3),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  batch, per_epoch = spec["batch"], len(x) // spec["batch"]
  net.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # compile, warm up
  epochs = max(steps // per_epoch, 1)
  start = time.perf_counter()
  net.fit(x, y, batch_size=batch, epochs=epochs, verbose=0)
  return epochs * per_epoch * batch / (time.perf_counter() - start)


def torch_model(name: str, spec: dict):
  import torch
  from torch import nn

  m = spec["model"]
  if name == "mlp":
    sizes, modules = [spec["input_shape"][0], *m["hidden_sizes"]], []
    for a, b in zip(sizes[:-1], sizes[1:]):
      modules += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*modules, nn.Linear(sizes[-1], m["num_classes"]))
  if name == "cnn":
    height, width, channels = spec["input_shape"]
    modules, k = [], m["kernel_size"]
    for c in m["channels"]:  # torch's BatchNorm momentum is 1 - ours
      modules += [nn.Conv2d(channels, c, k, padding=k // 2, bias=False), nn.BatchNorm2d(c, momentum=1 - m["bn_momentum"]),
                  nn.ReLU(), nn.MaxPool2d(2)]
      channels, height, width = c, height // 2, width // 2
    return nn.Sequential(*modules, nn.Flatten(), nn.Linear(channels * height * width, m["hidden_size"]), nn.ReLU(),
                         nn.Linear(m["hidden_size"], m["num_classes"]))
  if name == "transformer":
    length = spec["input_shape"][0]

    class Classifier(nn.Module):
      def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(m["vocab_size"], m["dim"])
        self.positions = nn.Parameter(torch.randn(length, m["dim"]) * 0.02)
        layer = nn.TransformerEncoderLayer(m["dim"], m["num_heads"], m["mlp_dim"], dropout=0.0, batch_first=True,
                                           norm_first=True, activation=nn.GELU(approximate="tanh"))
        self.encoder = nn.TransformerEncoder(layer, m["num_layers"], enable_nested_tensor=False)
        self.norm = nn.LayerNorm(m["dim"])
        self.head = nn.Linear(m["dim"], m["num_classes"])

      def forward(self, tokens):
        return self.head(self.norm(self.encoder(self.embed(tokens) + self.positions)).mean(1))

    return Classifier()
  raise ValueError(f"no PyTorch version of {name!r}")


def torch_train(name: str, spec: dict, x: np.ndarray, y: np.ndarray, steps: int, compiled: bool,
                compute_dtype: str = "float32") -> float:
  """PyTorch with its fused Adam (the default Adam updates one tensor at a time: slower on CPU); bfloat16:
  the forward pass and loss under `torch.autocast`, PyTorch's mixed precision."""
  import contextlib

  import torch

  net = torch_model(name, spec)
  if x.ndim == 4:
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # NCHW, PyTorch's native layout
  xt = torch.from_numpy(x).long() if x.dtype.kind == "i" else torch.from_numpy(x)
  yt = torch.from_numpy(y).long()
  opt = torch.optim.Adam(net.parameters(), 1e-3, fused=True)
  loss_fn = torch.nn.CrossEntropyLoss()
  autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if compute_dtype == "bfloat16"
              else contextlib.nullcontext)

  def step(xb, yb):
    opt.zero_grad(set_to_none=True)
    with autocast():
      loss = loss_fn(net(xb), yb)
    loss.backward()
    opt.step()
    return loss

  if compiled:
    step = torch.compile(step)
  batch, per_epoch = spec["batch"], len(x) // spec["batch"]

  def run(n):
    for i in range(n):
      s = (i % per_epoch) * batch
      step(xt[s:s + batch], yt[s:s + batch])

  run(5)
  start = time.perf_counter()
  run(steps)
  return steps * batch / (time.perf_counter() - start)
