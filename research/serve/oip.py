"""The Open Inference Protocol (KServe v2 REST): model metadata and typed tensors to and from numpy.

A request's inputs are `{"name", "shape", "datatype", "data"}` with `data` flat (row-major) or nested; the
names are the model's raw inputs (e.g. `image` UINT8 [N, 28, 28, 1], `text` BYTES [N]). A classifier answers
`probabilities` FP32 [N, C], `predictions` INT64 [N] and, with label names, `labels` BYTES [N]; a request's
`outputs` list picks among them.
"""

from __future__ import annotations

import math

import numpy as np

from research.errors import InputError

DATATYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
             "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
             "FP32": np.float32, "FP64": np.float64, "BYTES": object}
_NAMES = {np.dtype(v): k for k, v in DATATYPES.items() if v is not object}


def datatype(dtype: str) -> str:
  return "BYTES" if dtype == "str" else _NAMES[np.dtype(dtype)]


def _outputs(entry) -> list[dict]:
  manifest = entry.predictor.manifest
  if len(manifest["outputs"]) == 1 and len(manifest["outputs"][0]["shape"]) == 2:  # class scores
    classes = manifest["outputs"][0]["shape"][1]
    outputs = [{"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
               {"name": "predictions", "datatype": "INT64", "shape": [-1]}]
    return outputs + ([{"name": "labels", "datatype": "BYTES", "shape": [-1]}] if entry.predictor.label_names else [])
  return [{"name": o["name"], "datatype": datatype(o["dtype"]), "shape": [-1 if d is None else d for d in o["shape"]]}
          for o in manifest["outputs"]]


def metadata(entry) -> dict:
  return {"name": entry.name, "versions": [str(entry.version)], "platform": f"research/{entry.predictor.backend}",
          "inputs": [{"name": n, "datatype": datatype(s["dtype"]), "shape": [-1 if d is None else d for d in s["shape"]]}
                     for n, s in entry.predictor.signature.items()],
          "outputs": _outputs(entry)}


def decode_request(document: dict, signature: dict[str, dict]) -> tuple[dict[str, np.ndarray], list[str] | None]:
  """(raw inputs by name, the output names asked for or None for all); InputError names a malformed tensor."""
  tensors = document.get("inputs")
  if not isinstance(tensors, list) or not tensors:
    raise InputError('send {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
  raw = {}
  for tensor in tensors:
    if not isinstance(tensor, dict) or not {"name", "shape", "datatype", "data"} <= set(tensor):
      raise InputError("each input needs name, shape, datatype and data")
    name, shape, kind = tensor["name"], tensor["shape"], tensor["datatype"]
    if name not in signature:
      raise InputError(f"unknown input {name!r}; the model takes {', '.join(signature)}")
    if kind not in DATATYPES:
      raise InputError(f"input {name!r}: unknown datatype {kind!r}; use one of {', '.join(DATATYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
      raise InputError(f"input {name!r}: shape must be a list of whole numbers >= 0")
    if (kind == "BYTES") != (signature[name]["dtype"] == "str"):
      raise InputError(f"input {name!r} takes {datatype(signature[name]['dtype'])}, not {kind}")
    raw[name] = _array(name, tensor["data"], shape, kind)
  requested = document.get("outputs")
  if requested is None:
    return raw, None
  if not isinstance(requested, list) or not all(isinstance(o, dict) and "name" in o for o in requested):
    raise InputError('outputs must be a list of {"name": ...}')
  return raw, [o["name"] for o in requested]


def _flatten(data) -> list:
  if not isinstance(data, list):
    return [data]
  out = []
  for item in data:
    out.extend(_flatten(item) if isinstance(item, list) else [item])
  return out


def _array(name: str, data, shape: list[int], kind: str) -> np.ndarray:
  flat = _flatten(data)
  if len(flat) != math.prod(shape):
    raise InputError(f"input {name!r}: shape {shape} holds {math.prod(shape)} values, data has {len(flat)}")
  if kind == "BYTES":
    if not all(isinstance(v, str) for v in flat):
      raise InputError(f"input {name!r}: BYTES data must be strings")
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)
  if not all(isinstance(v, (int, float, bool)) for v in flat):
    raise InputError(f"input {name!r}: {kind} data must be numbers")
  try:
    return np.asarray(flat, dtype=np.float64 if kind.startswith("FP") else None).reshape(shape)
  except (ValueError, OverflowError) as e:
    raise InputError(f"input {name!r}: {e}") from None


def encode_response(entry, request_id, outputs: dict[str, np.ndarray], requested: list[str] | None) -> dict:
  tensors = dict(outputs)
  if "predictions" in tensors and entry.predictor.label_names:
    names = entry.predictor.label_names
    tensors["labels"] = np.array([names[c] for c in tensors["predictions"]], dtype=object)
  if requested is not None:
    unknown = [n for n in requested if n not in tensors]
    if unknown:
      raise InputError(f"unknown output {unknown[0]!r}; the model gives {', '.join(tensors)}")
    tensors = {n: tensors[n] for n in requested}
  response = {"model_name": entry.name, "model_version": str(entry.version), "outputs": [
      {"name": n, "datatype": "BYTES" if v.dtype == object else _NAMES[v.dtype], "shape": list(v.shape),
       "data": v.reshape(-1).tolist()} for n, v in tensors.items()]}
  if request_id is not None:
    response["id"] = request_id
  return response
