"""Attribution of a class score to a model's inputs: integrated gradients and gradient saliency.

Both take `f(params, x, *context) -> logits float[N, classes]`, a pure function of the
parameters and a batch of inputs (`context`: per-example arrays passed through unchanged,
e.g. a padding mask), and attribute the logit of each example's `target` class.

- `saliency`: the gradient of the target logit with respect to the input (Simonyan et al., 2013).
- `integrated_gradients` (Sundararajan et al., 2017): (x - baseline) times the average gradient on the
  straight path from the baseline to x, integrated numerically. Its attributions add up to
  f(x) - f(baseline) (completeness); the returned `delta` is how far the numerical integral is from it.
  The path's points are evaluated `batch_points` at a time, all examples in one batch.

Rules for the path integral (`method`): "gausslegendre" (Gauss-Legendre nodes, as Captum's default;
exact for smooth paths with few steps) or "trapezoid" (evenly spaced points).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

METHODS = ("gausslegendre", "trapezoid")
DEFAULT_STEPS = 64
TOLERANCE = 0.01  # the completeness error allowed before an example's path is integrated with more points
MAX_STEPS = 1024


def path_rule(steps: int, method: str = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
  """(alphas, weights) float64[steps]: the integral of g over [0, 1] is about sum(weights * g(alphas))."""
  if method not in METHODS:
    raise ValueError(f"unknown integration method {method!r}; choose one of {', '.join(METHODS)}.")
  if steps < (1 if method == "gausslegendre" else 2):
    raise ValueError(f"{method} needs at least {1 if method == 'gausslegendre' else 2} steps, got {steps}.")
  if method == "gausslegendre":
    nodes, weights = np.polynomial.legendre.leggauss(steps)  # on [-1, 1]
    return (nodes + 1) / 2, weights / 2
  weights = np.full(steps, 1.0 / (steps - 1))
  weights[[0, -1]] /= 2
  return np.linspace(0.0, 1.0, steps), weights


def _target_logits(f, params, x, target, context):
  logits = f(params, x, *context).astype(jnp.float32)
  return jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]


_scores = jax.jit(_target_logits, static_argnums=0)


def _gradient(f, params, x, target, context):
  """d logit[n, target[n]] / d x[n] for every n (examples do not interact in eval mode: one summed gradient)."""
  return jax.grad(lambda x: jnp.sum(_target_logits(f, params, x, target, context)))(x)


@partial(jax.jit, static_argnums=0)
def saliency_gradient(f, params, x, target, context=()):
  return _gradient(f, params, x, target, context)


def saliency(f: Callable, params, x, target, context=()) -> np.ndarray:
  """The gradient of each example's target logit with respect to its input x float[N, ...]: float32[N, ...]."""
  x = jnp.asarray(x, jnp.float32)
  return np.asarray(saliency_gradient(f, params, x, jnp.asarray(target, jnp.int32), tuple(context)))


@partial(jax.jit, static_argnums=0)
def _weighted_gradients(f, params, x, baseline, alphas, weights, target, context):
  """sum_i weights[i] * gradient at baseline + alphas[i] (x - baseline), for the points of one chunk."""
  n = x.shape[0]
  points = baseline[None] + alphas.reshape(-1, *([1] * x.ndim)) * (x - baseline)[None]  # [chunk, N, ...]
  repeat = lambda a: jnp.broadcast_to(a[None], (len(alphas), *a.shape)).reshape(len(alphas) * n, *a.shape[1:])
  grads = _gradient(f, params, points.reshape(-1, *x.shape[1:]), repeat(target), tuple(map(repeat, context)))
  return jnp.tensordot(weights, grads.reshape(len(alphas), *x.shape), axes=1)


@dataclasses.dataclass
class Attribution:
  attributions: np.ndarray  # float32, the shape of x
  score: np.ndarray  # f(x): each example's target logit, float32[N]
  baseline_score: np.ndarray  # f(baseline), float32[N]
  steps: np.ndarray  # int[N]: the points each example's integral took

  @property
  def delta(self) -> np.ndarray:
    """Completeness error per example: sum(attributions) - (f(x) - f(baseline))."""
    total = self.attributions.reshape(len(self.score), -1).sum(1, dtype=np.float64)
    return (total - (self.score.astype(np.float64) - self.baseline_score)).astype(np.float32)

  def outside(self, tolerance: float) -> np.ndarray:
    """bool[N]: examples whose completeness error exceeds `tolerance` times abs(f(x) - f(baseline))."""
    return np.abs(self.delta) > tolerance * np.abs(self.score - self.baseline_score)


def integrated_gradients(f: Callable, params, x, baseline, target, context=(), *, steps: int = DEFAULT_STEPS,
                         method: str = "gausslegendre", batch_points: int = 512, tolerance: float | None = TOLERANCE,
                         max_steps: int = MAX_STEPS) -> Attribution:
  """Integrated gradients of each example's target logit for inputs x float[N, ...] from `baseline` (same shape).

  The integral is a `method` rule of `steps` points. ReLU networks have kinks along the path that a few points
  miss: an example whose completeness error exceeds `tolerance` (relative to f(x) - f(baseline); None: never) is
  integrated again with twice the points, up to `max_steps`. Each jitted call evaluates about `batch_points`
  inputs (examples x path points).
  """
  x, baseline = jnp.asarray(x, jnp.float32), jnp.asarray(baseline, jnp.float32)
  target, context = jnp.asarray(target, jnp.int32), tuple(jnp.asarray(c) for c in context)
  path_rule(steps, method)  # a bad method or count fails before any work
  result = Attribution(_integrate(f, params, x, baseline, target, context, steps, method, batch_points),
                       np.asarray(_scores(f, params, x, target, context)),
                       np.asarray(_scores(f, params, baseline, target, context)), np.full(len(x), steps))
  while tolerance is not None and steps * 2 <= max_steps and result.outside(tolerance).any():
    steps *= 2
    again = np.flatnonzero(result.outside(tolerance))
    rows = np.resize(again, min(len(x), 1 << (len(again) - 1).bit_length()))  # padded to a power of two: few shapes
    result.attributions[again] = _integrate(f, params, x[rows], baseline[rows], target[rows],
                                            tuple(c[rows] for c in context), steps, method, batch_points)[:len(again)]
    result.steps[again] = steps
  return result


def _integrate(f, params, x, baseline, target, context, steps: int, method: str, batch_points: int) -> np.ndarray:
  """(x - baseline) times the `method` rule's average gradient on the path, in chunks of about `batch_points`
  inputs; the last chunk is padded with points of weight 0, so every call has one shape."""
  alphas, weights = path_rule(steps, method)
  chunk = max(1, min(steps, batch_points // max(1, x.shape[0])))
  padded = -(-steps // chunk) * chunk
  alphas = np.pad(alphas, (0, padded - steps)).astype(np.float32)
  weights = np.pad(weights, (0, padded - steps)).astype(np.float32)
  total = jnp.zeros_like(x)
  for start in range(0, padded, chunk):
    total = total + _weighted_gradients(f, params, x, baseline, alphas[start:start + chunk],
                                        weights[start:start + chunk], target, context)
  return np.array((x - baseline) * total)  # a writable copy: refined rows are written into it
