"""Post-training int8 quantization of the float artifacts exported in the same run. ::

    onnx_int8_dynamic  model.int8_dynamic.onnx  onnxruntime.quantization.quantize_dynamic: int8 weights of
                                                MatMuls, activations quantized on the fly per batch
    onnx_int8_static   model.int8_static.onnx   quantize_static, QDQ: int8 weights (QInt8), uint8 activations
                                                (QUInt8) with ranges calibrated (MinMax) on training batches
    tflite_int8        model.int8.tflite        the TFLite converter's dynamic-range int8 (Optimize.DEFAULT)

Quantized artifacts are not held to the float tolerance: the export checks
their accuracy on the real test set against the float artifact instead.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from research.export import onnx as onnx_format
from research.export import tflite as tflite_format
from research.export.model import Exportable

DYNAMIC_FILE = "model.int8_dynamic.onnx"
STATIC_FILE = "model.int8_static.onnx"
TFLITE_FILE = "model.int8.tflite"
CALIBRATION_BATCHES = 16


def _matmul_graph(src: Path, dest: Path) -> None:
  """Rewrites Gemm(A, B, 0) as MatMul(A, B): onnxruntime's dynamic quantizer skips Gemm, and its
  static per-channel path fails on the scalar zero bias that jax2onnx gives Gemm (the bias follows as an Add)."""
  import onnx
  from onnx import helper, numpy_helper

  model = onnx.load(str(src))
  zeros = {i.name for i in model.graph.initializer if not numpy_helper.to_array(i).any()}
  nodes = []
  for node in model.graph.node:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    bias = node.input[2] if len(node.input) > 2 else ""
    if (node.op_type == "Gemm" and not attrs.get("transA", 0) and not attrs.get("transB", 0)
        and attrs.get("alpha", 1.0) == 1.0 and (not bias or bias in zeros)):
      node = helper.make_node("MatMul", list(node.input[:2]), list(node.output), name=node.name)
    nodes.append(node)
  del model.graph.node[:]
  model.graph.node.extend(nodes)
  used = {name for node in nodes for name in node.input}
  kept = [i for i in model.graph.initializer if i.name in used]  # the zero biases, now unused
  del model.graph.initializer[:]
  model.graph.initializer.extend(kept)
  onnx.save_model(model, str(dest))


def _prepared(out: Path, tmp: Path) -> Path:
  from onnxruntime.quantization.shape_inference import quant_pre_process

  float_model = out / onnx_format.FILE
  if not float_model.exists():
    raise FileNotFoundError(f"{float_model} must be exported before it is quantized")
  _matmul_graph(float_model, tmp / "matmul.onnx")
  try:
    quant_pre_process(str(tmp / "matmul.onnx"), str(tmp / "prepared.onnx"))
  except Exception:  # noqa: BLE001  symbolic shape inference fails on Conv/Einsum of a dynamic batch: ONNX's own
    quant_pre_process(str(tmp / "matmul.onnx"), str(tmp / "prepared.onnx"), skip_symbolic_shape=True)
  return tmp / "prepared.onnx"


def _artifact(path: str, method: str, **extra) -> dict:
  return {"files": [path], "path": path, "quantized_from": "onnx", "method": method, "dynamic_batch": True,
          "runtime": "onnxruntime (CPUExecutionProvider)", **extra}


DYNAMIC_OP_TYPES = ("MatMul",)  # not Conv: onnxruntime's ConvInteger ran the MNIST CNN 4x slower than float


def export_onnx_dynamic(ex: Exportable, out: Path, *, per_channel: bool = False,
                        op_types: tuple[str, ...] | None = DYNAMIC_OP_TYPES) -> dict:
  """`op_types`: the ONNX ops whose weights are quantized (None: every kind onnxruntime can)."""
  from onnxruntime.quantization import QuantType, quantize_dynamic

  with tempfile.TemporaryDirectory() as tmp:
    quantize_dynamic(_prepared(out, Path(tmp)), out / DYNAMIC_FILE, weight_type=QuantType.QInt8,
                     per_channel=per_channel, op_types_to_quantize=list(op_types) if op_types else None)
  return _artifact(DYNAMIC_FILE, "onnxruntime quantize_dynamic", weights="int8", activations="int8, dynamic",
                   per_channel=per_channel, op_types=list(op_types) if op_types else "all")


class _Batches:
  """onnxruntime's CalibrationDataReader over a list of input batches."""

  def __init__(self, names: list[str], batches: list[list[np.ndarray]]):
    self._items = iter([dict(zip(names, b)) for b in batches])

  def get_next(self):
    return next(self._items, None)


def calibration_batches(ex: Exportable, batches: int = CALIBRATION_BATCHES, batch_size: int | None = None,
                        seed: int = 0) -> list[list[np.ndarray]]:
  """`batches` random training batches (of the config's batch size), preprocessed as in training."""
  batch_size = batch_size or int(ex.config.data.batch_size)
  offset = int(np.random.default_rng(seed).integers(0, 1 << 30))  # a seeded window of the training split
  return ex.real_inputs("train", [batch_size] * batches, offset=offset)


def export_onnx_static(ex: Exportable, out: Path, *, batches: int = CALIBRATION_BATCHES,
                       per_channel: bool = False, calibration: list[list[np.ndarray]] | None = None) -> dict:
  """`calibration`: input batches to calibrate on (default: `batches` random batches of the training split)."""
  from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

  calibration = calibration or calibration_batches(ex, batches)
  with tempfile.TemporaryDirectory() as tmp:
    quantize_static(_prepared(out, Path(tmp)), out / STATIC_FILE, _Batches([s.name for s in ex.inputs], calibration),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=per_channel, calibrate_method=CalibrationMethod.MinMax)
  return _artifact(STATIC_FILE, "onnxruntime quantize_static (QDQ, MinMax)", weights="int8", activations="uint8",
                   per_channel=per_channel,
                   calibration={"split": "train", "batches": len(calibration), "batch_size": len(calibration[0][0])})


def export_tflite_int8(ex: Exportable, out: Path, *, batch: int | None = None) -> dict:
  content, _ = tflite_format.flatbuffer(ex, out, batch=batch, int8=True)
  (out / TFLITE_FILE).write_bytes(content)
  return {"files": [TFLITE_FILE], "path": TFLITE_FILE, "batch": batch, "dynamic_batch": batch is None,
          "inputs": [s.name for s in ex.inputs], "outputs": ex.output_names, "quantized_from": "tflite",
          "method": "TFLite dynamic-range (Optimize.DEFAULT)", "weights": "int8", "activations": "float32",
          "runtime": "ai_edge_litert.interpreter.Interpreter (XNNPACK)"}
