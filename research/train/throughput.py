"""Training throughput in FLOP/s and model FLOPs utilization (MFU) beside examples/s.

The FLOPs of one step are XLA's own count (`cost_analysis()["flops"]`) of the compiled train step: the
forward and backward passes, recomputation under `config.remat`, the optimizer and the elementwise work,
for one device's share of the SPMD program, times the devices. XLA counts the body of a loop once, so a step
with gradient accumulation (a `lax.scan` over microbatches) is counted through the same step without it,
lowered but not compiled: the same arithmetic. The count is taken once, at the first log, from the compiled
program already in jit's cache, so it costs a few milliseconds.

MFU divides the achieved FLOP/s by the peak of the devices, from `PEAKS` below by `device.device_kind`;
a device not in the table (a CPU, for one) has no MFU, and none is logged.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

# Dense peaks in FLOP/s by the vendors' datasheets: (device_kind contains, bfloat16, float32), first match wins.
# float32 is what XLA's default matmul precision runs: TF32 tensor cores on NVIDIA GPUs since the A100,
# one bfloat16 pass on TPUs (so their float32 peak is the bfloat16 one).
PEAKS = (("H100 PCIe", 756e12, 378e12), ("H100", 989e12, 495e12), ("H200", 989e12, 495e12),
         ("A100", 312e12, 156e12), ("L4", 121e12, 60e12),
         ("TPU v6 lite", 918e12, 918e12), ("TPU v5 lite", 197e12, 197e12), ("TPU v5", 459e12, 459e12),
         ("TPU v4", 275e12, 275e12))


def peak_flops(device: jax.Device, compute_dtype: str = "bfloat16") -> float | None:
  """The dense peak FLOP/s of one `device` computing in `compute_dtype`, or None if it is not in `PEAKS`."""
  for name, bf16, fp32 in PEAKS:
    if name in device.device_kind:
      return bf16 if compute_dtype == "bfloat16" else fp32
  return None


def step_flops(stage, devices: int) -> float:
  """FLOPs of one step of all `devices` from a `jax.stages.Lowered` or `Compiled` step's cost analysis."""
  cost = stage.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list of one dict in older jax versions
  return float(cost.get("flops", 0.0)) * devices


class Meter:
  """`scalars(steps_per_sec, state, batch)`: perf/tflops_per_sec, and perf/mfu where the peak is known.

  `counted_step` is the jitted train step whose FLOPs count a step (the train step itself, or for gradient
  accumulation the same step without it); it is lowered with the arguments of the first call.
  """

  def __init__(self, counted_step: Callable, accumulates: bool, devices: int, compute_dtype: str):
    self.counted_step, self.accumulates, self.devices = counted_step, accumulates, devices
    peak = peak_flops(jax.devices()[0], compute_dtype)
    self.peak = None if peak is None else peak * devices
    self.flops: float | None = None

  def scalars(self, steps_per_sec: float, state, batch) -> dict[str, float]:
    if self.flops is None:
      lowered = self.counted_step.lower(state, batch)
      self.flops = step_flops(lowered if self.accumulates else lowered.compile(), self.devices)
    achieved = self.flops * steps_per_sec
    values = {"perf/tflops_per_sec": achieved / 1e12}
    if self.peak:
      values["perf/mfu"] = achieved / self.peak
    return values
