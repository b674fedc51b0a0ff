"""On-device augmentation, applied inside the jitted train step (never in evaluation).

`config.data.augment = "random_crop(pad=4)|flip_lr|rotate(degrees=10)"` builds a
function `(batch, rng) -> batch` of jax ops on `batch[key]` (NHWC images). Every
op draws from its own `fold_in(rng, index)`, and the step's rng is
`fold_in(seed_key, step)`, so augmentation is a pure function of (seed, step):
deterministic, and the same after a resume.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from research.data.ops import parse_op
from research.registry import AUGMENTS

Batch = dict[str, jax.Array]


@AUGMENTS.register("flip_lr")
def flip_lr(batch: Batch, rng: jax.Array, p: float = 0.5, key: str = "image") -> Batch:
  """Mirrors each image left-right with probability p."""
  x = batch[key]
  flip = jax.random.bernoulli(rng, p, (x.shape[0],) + (1,) * (x.ndim - 1))
  return {**batch, key: jnp.where(flip, x[:, :, ::-1], x)}


@AUGMENTS.register("random_crop")
def random_crop(batch: Batch, rng: jax.Array, pad: int = 4, key: str = "image") -> Batch:
  """Zero-pads by `pad` pixels on each side, then crops back to the original size at a random offset."""
  x = batch[key]
  n, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(rng, (n, 2), 0, 2 * pad + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
  return {**batch, key: jax.vmap(crop)(padded, offsets)}


@AUGMENTS.register("rotate")
def rotate(batch: Batch, rng: jax.Array, degrees: float = 10.0, key: str = "image") -> Batch:
  """Rotates each image about its centre by a uniform angle in [-degrees, degrees] (bilinear, zero fill)."""
  x = batch[key]
  n, h, w, c = x.shape
  angles = jax.random.uniform(rng, (n,), minval=-degrees, maxval=degrees) * (jnp.pi / 180)
  rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
  cy, cx = (h - 1) / 2, (w - 1) / 2

  def one(img, angle):
    cos, sin = jnp.cos(angle), jnp.sin(angle)  # sample the source pixel of each output pixel
    src_r = cos * (rows - cy) - sin * (cols - cx) + cy
    src_c = sin * (rows - cy) + cos * (cols - cx) + cx
    channel = lambda ch: jax.scipy.ndimage.map_coordinates(ch, [src_r, src_c], order=1, mode="constant")
    return jax.vmap(channel, in_axes=2, out_axes=2)(img)

  return {**batch, key: jax.vmap(one)(x, angles).astype(x.dtype)}


def build(spec: str) -> Callable[[Batch, jax.Array], Batch] | None:
  """'op1(args)|op2' -> one function (batch, rng) -> batch; None for an empty spec."""
  steps = []
  for text in filter(None, (part.strip() for part in spec.split("|"))):
    name, args, kwargs = parse_op(text)
    steps.append((AUGMENTS.get(name), args, kwargs))
  if not steps:
    return None

  def apply(batch: Batch, rng: jax.Array) -> Batch:
    for i, (fn, args, kwargs) in enumerate(steps):
      batch = fn(batch, jax.random.fold_in(rng, i), *args, **kwargs)
    return batch

  return apply
