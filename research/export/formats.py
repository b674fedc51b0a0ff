"""The export formats: what each writes, what it needs installed, how it is checked.

A format names an exporter `export(ex, out, **options) -> artifact dict` (the
dict lists the files it wrote and goes into manifest.json) and a loader
`load(out, artifact, **options) -> run`, where `run(*numpy inputs) -> list of numpy
outputs` runs the artifact in its own runtime. Float formats are held to the
parity tolerance; quantized ones to an accuracy bound against their float base.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from typing import Sequence

from research.errors import ConfigError
from research.registry import Registry


@dataclasses.dataclass(frozen=True)
class Format:
  name: str
  exporter: str  # "module:function"
  loader: str  # "module:function"
  extra: str | None  # the pip extra that installs its packages
  packages: tuple[str, ...]  # importable modules it needs
  description: str
  base: str | None = None  # a quantized format: the float format it is made from (exported with it)

  @property
  def quantized(self) -> bool:
    return self.base is not None

  def missing(self) -> list[str]:
    return [p for p in self.packages if importlib.util.find_spec(p) is None]

  def _resolve(self, spec: str):
    module, function = spec.split(":")
    return getattr(importlib.import_module(module), function)

  def export(self, ex, out, **options) -> dict:
    return self._resolve(self.exporter)(ex, out, **options)

  def load(self, out, artifact, **options):
    return self._resolve(self.loader)(out, artifact, **options)


_ONNX = ("jax2onnx", "onnx", "onnxruntime")
_TF = ("tensorflow", "ai_edge_litert")
ORDER = [  # in export order: each format's base (and tflite's SavedModel, when asked for) comes before it
    Format("onnx", "research.export.onnx:export", "research.export.onnx:load", "onnx", _ONNX,
           "model.onnx via jax2onnx, dynamic batch; run in onnxruntime"),
    Format("onnx_int8_dynamic", "research.export.quantize:export_onnx_dynamic", "research.export.onnx:load",
           "onnx", _ONNX, "model.int8_dynamic.onnx: int8 weights, activations quantized per batch", base="onnx"),
    Format("onnx_int8_static", "research.export.quantize:export_onnx_static", "research.export.onnx:load",
           "onnx", _ONNX, "model.int8_static.onnx: int8 QDQ, activation ranges calibrated on training batches",
           base="onnx"),
    Format("stablehlo", "research.export.stablehlo:export", "research.export.stablehlo:load", None, (),
           "stablehlo/ via jax.export (cpu, cuda), weights beside it, dynamic batch; run after deserialize"),
    Format("saved_model", "research.export.tf:export", "research.export.tf:load", "tf", ("tensorflow",),
           "saved_model/ via jax2tf native serialization (cpu, cuda), serving_default, dynamic batch"),
    Format("tflite", "research.export.tflite:export", "research.export.tflite:load", "tf", _TF,
           "model.tflite converted from that SavedModel, dynamic or fixed batch; run in LiteRT"),
    Format("tflite_int8", "research.export.quantize:export_tflite_int8", "research.export.tflite:load", "tf", _TF,
           "model.int8.tflite: dynamic-range int8 weights", base="tflite"),
]
FORMATS: Registry = Registry("export format")
for _f in ORDER:
  FORMATS.register(_f.name)(_f)


def parse(formats: str | Sequence[str]) -> list[Format]:
  """'onnx,stablehlo' -> Formats in export order, with the base of each quantized one; packages checked."""
  names = [n.strip() for n in (formats.split(",") if isinstance(formats, str) else formats) if n.strip()]
  if not names:
    raise ConfigError(f"--format names no export format; known: {', '.join(FORMATS.names())}.")
  unknown = [n for n in names if n not in FORMATS]
  if unknown:
    raise ConfigError(FORMATS.unknown_message(unknown[0], "--format"))
  chosen = {f.name: f for f in (FORMATS.get(n) for n in names)}
  for f in list(chosen.values()):
    if f.base:
      chosen.setdefault(f.base, FORMATS.get(f.base))
  for f in chosen.values():
    missing = f.missing()
    if missing:
      raise ConfigError(f"Format {f.name!r} needs {' and '.join(missing)} (not installed): "
                        f"install the {f.extra!r} extra, pip install -e '.[{f.extra}]'.")
  return sorted(chosen.values(), key=ORDER.index)
