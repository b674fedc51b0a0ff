"""The Open Inference Protocol's binary tensor data extension: raw tensor bytes after the JSON of a request or response.

A body with binary tensors is the JSON object, then each binary tensor's bytes in the order the JSON lists them;
the header `Inference-Header-Content-Length` gives the JSON's length in bytes, and each binary tensor carries
`parameters.binary_data_size`. Elements are little-endian and row-major without padding; a BOOL is one byte (0 or
1); a BYTES element is a 4-byte little-endian unsigned length followed by that many bytes. Decoding views the
request's bytes in place (np.frombuffer); nothing is copied until the model's batch is put together.
"""

from __future__ import annotations

import math
import struct

import ml_dtypes
import numpy as np

from research.errors import InputError
from research.serve.jsonio import dumps

HEADER = "Inference-Header-Content-Length"
EXTENSION = "binary_tensor_data"
# Every fixed-size datatype as its little-endian numpy type; BYTES is length-prefixed instead.
DTYPES = {"BOOL": "u1", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
          "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
          "BF16": ml_dtypes.bfloat16}
_LENGTH = struct.Struct("<I")


def split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview | None]:
  """(the JSON part, the binary part) of a request body; without the header the whole body is JSON (None)."""
  if header_length is None:
    return body, None
  if not header_length.strip().isdigit() or len(header_length) > 18:  # int() of a few thousand digits raises
    raise InputError(f"{HEADER} must be the JSON part's length in bytes, got {header_length[:40]!r}")
  length = int(header_length)
  if length > len(body):
    raise InputError(f"{HEADER} is {length} but the body has only {len(body)} bytes")
  view = memoryview(body)
  return bytes(view[:length]), view[length:]


def decode(name: str, kind: str, shape: list[int], chunk: memoryview) -> np.ndarray:
  """One input's binary data as an array of `shape`: a view of `chunk` for fixed-size types, strings for BYTES
  (the models' BYTES inputs are text: each element is decoded as UTF-8)."""
  count = math.prod(shape)
  if kind == "BYTES":
    return _bytes(name, chunk, count).reshape(shape)
  dtype = np.dtype(DTYPES[kind])
  if len(chunk) != count * dtype.itemsize:
    raise InputError(f"input {name!r}: binary_data_size is {len(chunk)} bytes but shape {shape} of {kind} takes "
                     f"{count * dtype.itemsize} ({dtype.itemsize} per element)")
  array = np.frombuffer(chunk, dtype=dtype).reshape(shape)
  if kind == "BOOL":
    if array.size and array.max() > 1:
      raise InputError(f"input {name!r}: BOOL elements are one byte each, 0 or 1")
    return array.view(np.bool_)
  return array.astype(np.float32) if kind == "BF16" else array  # numpy does no arithmetic on bfloat16


def _bytes(name: str, chunk: memoryview, count: int) -> np.ndarray:
  if 4 * count > len(chunk):  # checked before allocating: a shape can claim any number of elements
    raise InputError(f"input {name!r}: {count} BYTES elements need at least {4 * count} bytes (a 4-byte length "
                     f"each), binary_data_size is {len(chunk)}")
  out, offset = np.empty(count, dtype=object), 0
  for i in range(count):
    if offset + 4 > len(chunk):
      raise InputError(f"input {name!r}: the BYTES data ends after {i} of {count} elements (each is a 4-byte "
                       f"little-endian length, then the bytes)")
    (size,), offset = _LENGTH.unpack_from(chunk, offset), offset + 4
    if offset + size > len(chunk):
      raise InputError(f"input {name!r}: BYTES element {i} says {size} bytes but {len(chunk) - offset} are left")
    try:
      out[i] = str(chunk[offset:offset + size], "utf-8")
    except UnicodeDecodeError:
      raise InputError(f"input {name!r}: BYTES element {i} is not UTF-8 text") from None
    offset += size
  if offset != len(chunk):
    raise InputError(f"input {name!r}: {len(chunk) - offset} bytes are left after its {count} BYTES elements "
                     f"(shape and binary_data_size disagree)")
  return out


def encode(array: np.ndarray) -> bytes:
  """An output's binary data: little-endian row-major elements, or length-prefixed UTF-8 for text (BYTES)."""
  if array.dtype == object:
    items = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]
    return b"".join(_LENGTH.pack(len(v)) + v for v in items)
  return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def body(document: dict, chunks: list[bytes]) -> tuple[bytes, int]:
  """(a response body: the JSON document, then `chunks` in order; the JSON's length in bytes)."""
  header = dumps(document)
  return b"".join([header, *chunks]), len(header)
