"""The Open Inference Protocol (KServe v2 REST): model metadata and typed tensors to and from numpy.

A request's inputs are `{"name", "shape", "datatype", "data"}` with `data` flat (row-major) or nested, or, with the
binary tensor data extension (research/serve/binary.py), `"parameters": {"binary_data_size": n}` and the bytes after
the JSON. The names are the model's raw inputs (e.g. `image` UINT8 [N, 28, 28, 1], `text` BYTES [N]). A classifier
answers `probabilities` FP32 [N, C], `predictions` INT64 [N] and, with label names, `labels` BYTES [N]; a request's
`outputs` list picks among them. Outputs come back as binary data where the request's `binary_data_output` or an
output's `binary_data` parameter asks for it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from research.errors import InputError
from research.serve import binary

DATATYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
             "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
             "FP32": np.float32, "FP64": np.float64, "BYTES": object}
_NAMES = {np.dtype(v): k for k, v in DATATYPES.items() if v is not object}
# Parameters of extensions this server does not have: refused, as ignoring them would answer something else.
_UNSUPPORTED = {"shared_memory_region": "the shared memory extension is not supported: send the tensor in the body",
                "classification": "the classification extension is not supported: ask for the 'labels' output"}


@dataclasses.dataclass
class Call:
  """A decoded inference request."""
  inputs: dict[str, np.ndarray]  # raw inputs by name
  outputs: dict[str, bool] | None  # the outputs asked for -> whether each goes back as binary data; None: all
  binary_output: bool  # the request's binary_data_output: how outputs it does not name go back
  id: str | None


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


def metadata(entry, versions: list[int]) -> dict:
  """`versions`: every version of the model that a request may name."""
  return {"name": entry.name, "versions": [str(v) for v in versions], "platform": f"research/{entry.predictor.backend}",
          "inputs": [{"name": n, "datatype": datatype(s["dtype"]), "shape": [-1 if d is None else d for d in s["shape"]]}
                     for n, s in entry.predictor.signature.items()],
          "outputs": _outputs(entry)}


def _parameters(where: str, holder: dict) -> dict:
  parameters = holder.get("parameters", {})
  if not isinstance(parameters, dict):
    raise InputError(f"{where}: parameters must be an object of name: value")
  for key, why in _UNSUPPORTED.items():
    if key in parameters:
      raise InputError(f"{where}: {why}")
  return parameters


def _flag(where: str, parameters: dict, key: str, default: bool = False) -> bool:
  value = parameters.get(key, default)
  if not isinstance(value, bool):
    raise InputError(f"{where}: parameters.{key} must be true or false")
  return value


def decode_request(document: dict, entry, tail: memoryview | None) -> Call:
  """The request for `entry`'s model; `tail`: the body's binary part (None when it has no binary header).
  InputError names a malformed tensor, an unknown output or binary sizes that do not add up."""
  signature, tensors = entry.predictor.signature, document.get("inputs")
  if not isinstance(tensors, list) or not tensors:
    raise InputError('send {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
  if "id" in document and not isinstance(document["id"], str):
    raise InputError("the request's id must be a string")
  raw, offset = {}, 0
  for tensor in tensors:
    if not isinstance(tensor, dict) or not {"name", "shape", "datatype"} <= set(tensor):
      raise InputError("each input needs name, shape, datatype and data (or parameters.binary_data_size)")
    name, shape, kind = tensor["name"], tensor["shape"], tensor["datatype"]
    if not isinstance(name, str) or not isinstance(kind, str):
      raise InputError("an input's name and datatype must be strings")
    if name not in signature:
      raise InputError(f"unknown input {name!r}; the model takes {', '.join(signature)}")
    if name in raw:
      raise InputError(f"input {name!r} is given twice")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
      raise InputError(f"input {name!r}: shape must be a list of whole numbers >= 0")
    size = _parameters(f"input {name!r}", tensor).get("binary_data_size")
    _check_datatype(name, kind, signature[name]["dtype"], binary_data=size is not None)
    if size is None:
      if "data" not in tensor:
        raise InputError(f"input {name!r} needs data, or parameters.binary_data_size and its bytes after the JSON")
      raw[name] = _array(name, tensor["data"], shape, kind)
      continue
    if "data" in tensor:
      raise InputError(f"input {name!r}: give data or parameters.binary_data_size, not both")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
      raise InputError(f"input {name!r}: parameters.binary_data_size must be a whole number of bytes")
    if tail is None:
      raise InputError(f"input {name!r} has parameters.binary_data_size but the request has no {binary.HEADER} "
                       "header (the length of its JSON part)")
    if offset + size > len(tail):
      raise InputError(f"input {name!r}: binary_data_size {size} runs past the end of the body ({len(tail) - offset} "
                       f"bytes left after the JSON and the inputs before it)")
    raw[name] = binary.decode(name, kind, shape, tail[offset:offset + size])
    offset += size
  if tail is not None and offset != len(tail):
    raise InputError(f"the body has {len(tail)} bytes after its JSON but the inputs' binary_data_size add up to "
                     f"{offset}")
  binary_output = _flag("the request", _parameters("the request", document), "binary_data_output")
  return Call(raw, _requested(document.get("outputs"), entry, binary_output), binary_output, document.get("id"))


def _check_datatype(name: str, kind, dtype: str, binary_data: bool) -> None:
  known = binary.DTYPES if binary_data else DATATYPES
  if kind not in known and kind != "BYTES":
    hint = "; BF16 is sent as binary data only" if kind == "BF16" else ""
    raise InputError(f"input {name!r}: unknown datatype {kind!r}; use one of {', '.join(known)}{hint}")
  if (kind == "BYTES") != (dtype == "str"):
    raise InputError(f"input {name!r} takes {datatype(dtype)}, not {kind}")


def _requested(requested, entry, binary_output: bool) -> dict[str, bool] | None:
  if requested is None:
    return None
  if not isinstance(requested, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                for o in requested):
    raise InputError('outputs must be a list of {"name": ...}')
  names = [o["name"] for o in _outputs(entry)]
  unknown = next((o["name"] for o in requested if o["name"] not in names), None)
  if unknown is not None:
    raise InputError(f"unknown output {unknown!r}; the model gives {', '.join(names)}")
  return {o["name"]: _flag(f"output {o['name']!r}", _parameters(f"output {o['name']!r}", o), "binary_data",
                           binary_output) for o in requested}


def _flatten(data) -> list:
  if not isinstance(data, list):
    return [data]
  out = []
  for item in data:
    out.extend(_flatten(item) if isinstance(item, list) else [item])
  return out


def _array(name: str, data, shape: list[int], kind: str) -> np.ndarray:
  if kind == "UINT8" and isinstance(data, list):  # pixels: bytes() takes a flat list of 0-255 at a third of the cost
    try:
      array = np.frombuffer(bytes(data), np.uint8)
    except (ValueError, TypeError):  # nested, out of range or not whole numbers: the general way names the problem
      array = None
    if array is not None and array.size == math.prod(shape):
      return array.reshape(shape)
  if kind != "BYTES" and isinstance(data, list):  # the common case in one C call: well-formed numbers
    try:
      array = np.asarray(data, dtype=np.float64 if kind.startswith("FP") else None)
    except (ValueError, TypeError, OverflowError):  # ragged or mixed: the checks below name the problem
      array = None
    if array is not None and array.dtype.kind in "biuf" and array.size == math.prod(shape):
      return array.reshape(shape)
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


def encode_response(entry, call: Call, outputs: dict[str, np.ndarray]) -> tuple[dict, list[bytes]]:
  """(the response's JSON document, the binary data of its binary outputs in order; none for an all-JSON one)."""
  tensors = dict(outputs)
  if "predictions" in tensors and entry.predictor.label_names:
    names = entry.predictor.label_names
    tensors["labels"] = np.array([names[c] for c in tensors["predictions"]], dtype=object)
  if call.outputs is not None:
    tensors = {n: tensors[n] for n in call.outputs}
  described, chunks = [], []
  for n, v in tensors.items():
    tensor = {"name": n, "datatype": "BYTES" if v.dtype == object else _NAMES[v.dtype], "shape": list(v.shape)}
    if call.binary_output if call.outputs is None else call.outputs[n]:
      chunks.append(binary.encode(v))
      tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
    else:
      tensor["data"] = v.reshape(-1).tolist()
    described.append(tensor)
  response = {"model_name": entry.name, "model_version": str(entry.version), "outputs": described}
  if call.id is not None:
    response["id"] = call.id
  return response, chunks
