"""ONNX through jax2onnx, with a dynamic batch dimension; run back in onnxruntime.

The model is traced to a jaxpr first (with a symbolic batch dimension) and
jax2onnx converts that jaxpr, not the NNX module: jax2onnx's module-level rules
replace layers' `__call__` during conversion and do not accept every argument a
model passes (`nnx.Dropout(..., rngs=...)` fails), while its primitive-level
rules work for any JAX function. ONNX Runtime fuses the resulting MatMul/Add
pairs as it would a Gemm.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from research.export.model import Exportable

OPSET = 23  # jax2onnx 0.17's default; onnxruntime >= 1.20 runs it
FILE = "model.onnx"
_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf cannot hold 2 GiB: larger weights go to model.onnx.data


def to_proto(ex: Exportable, *, opset: int = OPSET, batch: int | None = None):
  """The ONNX ModelProto of `ex`; `batch=None` keeps the batch dimension dynamic."""
  from jax2onnx import to_onnx

  _load_primitive_rules()
  structs = ex.input_structs(batch)
  closed = jax.make_jaxpr(ex)(*structs)

  def traced(*inputs):
    return jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *inputs)

  return to_onnx(traced, structs, model_name=ex.name, opset=opset,
                 input_names=[s.name for s in ex.inputs], output_names=ex.output_names)


def _load_primitive_rules() -> None:
  """Imports jax2onnx's rules for JAX's primitives, the only ones a jaxpr needs, and marks its rules loaded.

  Otherwise `to_onnx` imports every rule jax2onnx ships, Equinox's and its examples' included, some of which build
  and initialize modules at import: 6 of the 7 s that took in each exporting process. (jax2onnx 0.17's own
  discovery functions; where a later version lacks them, `to_onnx` loads everything as before.)"""
  from jax2onnx.plugins import plugin_system

  import_tree, loaded = getattr(plugin_system, "_import_tree", None), "_already_imported_plugins"
  if import_tree is None or getattr(plugin_system, loaded, True):
    return
  import_tree(Path(plugin_system.__file__).parent / "jax", "jax2onnx.plugins.jax")
  setattr(plugin_system, loaded, True)


def save(proto, path: Path) -> list[str]:
  """Writes `proto` to `path` (one file unless the weights pass ~1.8 GB); returns the file names."""
  import onnx

  external = proto.ByteSize() > _EXTERNAL_DATA_BYTES
  data = path.name + ".data"
  onnx.save_model(proto, str(path), save_as_external_data=external, all_tensors_to_one_file=True, location=data)
  return [path.name, data] if external else [path.name]


def export(ex: Exportable, out: Path, *, opset: int = OPSET) -> dict:
  import onnx

  proto = to_proto(ex, opset=opset)
  onnx.helper.set_model_props(proto, {"research.model": ex.name, "research.step": str(ex.meta.get("step", ""))})
  files = save(proto, out / FILE)
  return {"files": files, "path": FILE, "opset": opset, "dynamic_batch": True,
          "runtime": "onnxruntime (CPUExecutionProvider)"}


def session(path: Path | str, threads: int = 0):
  """An onnxruntime session on the CPU. `threads`: 0, onnxruntime's default (a thread per core, spinning while
  idle); N, N threads per call that sleep while idle, so they leave the cores to the rest of the process (a server's
  event loop: docs/performance.md, serving)."""
  import onnxruntime as ort

  options = ort.SessionOptions()
  options.intra_op_num_threads = threads
  if threads:
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
  options.log_severity_level = 3  # errors only
  return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load(out: Path, artifact: dict, threads: int = 0):
  """Runs the artifact: a function of numpy inputs returning a list of numpy outputs (`threads`: as `session`)."""
  sess = session(out / artifact["path"], threads)
  names = [i.name for i in sess.get_inputs()]
  return lambda *inputs: [np.asarray(y) for y in sess.run(None, dict(zip(names, inputs)))]
