"""FLOP/s and MFU (research/train/throughput.py): XLA's count of a step, and the peaks of known devices."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.train import accumulation, throughput


def _device(kind: str):
  return types.SimpleNamespace(device_kind=kind)


@pytest.mark.parametrize("kind, dtype, peak", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12), ("NVIDIA H100 PCIe", "bfloat16", 756e12),
    ("NVIDIA H200", "float32", 495e12), ("NVIDIA A100-SXM4-40GB", "bfloat16", 312e12),
    ("TPU v5 lite", "float32", 197e12), ("TPU v5p", "bfloat16", 459e12), ("cpu", "bfloat16", None)])
def test_peaks_of_known_devices_and_none_for_others(kind, dtype, peak):
  assert throughput.peak_flops(_device(kind), dtype) == peak


def _step(w, batch):
  """A least-squares 'train step': gradients of a 64 x 32 x 16 matmul's loss, accumulated over 4 microbatches."""
  def loss_and_grads(w, state, micro, rng):
    value, grads = jax.value_and_grad(lambda w: jnp.mean((micro["x"] @ w) ** 2))(w)
    return (value, (jnp.float32(len(micro["x"])), state)), grads
  return accumulation.accumulate(loss_and_grads, w, 0, batch, jax.random.key(0), 4)[1]


def test_flops_count_the_whole_step_once_and_mfu_is_left_out_on_a_cpu():
  w, batch = jnp.ones((32, 16)), {"x": jnp.ones((64, 32))}
  matmuls = 2 * (2 * 64 * 32 * 16)  # forward, and the gradient with respect to w
  counted = throughput.step_flops(jax.jit(_step).lower(w, batch).compile(), devices=1)
  assert counted < 0.5 * matmuls  # XLA counts the body of the microbatches' loop once: not a step's count
  meter = throughput.Meter(jax.jit(lambda w, b: jax.grad(lambda w: jnp.mean((b["x"] @ w) ** 2))(w)),
                           accumulates=True, devices=2, compute_dtype="float32")
  values = meter.scalars(10.0, w, batch)  # counted by the same step without accumulation, on 2 devices
  assert set(values) == {"perf/tflops_per_sec"}
  flops = values["perf/tflops_per_sec"] * 1e12 / 10.0 / 2
  np.testing.assert_allclose(flops, matmuls, rtol=0.1)  # the matmuls and a few elementwise operations
