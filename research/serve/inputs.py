"""Raw inputs for a served model: checked against the export's signature, read from files for the CLI.

A model's raw signature is the manifest's `preprocessing.raw_inputs`, e.g.
{"image": {"shape": [null, 28, 28, 1], "dtype": "uint8"}} for pixels in 0-255, or
{"text": {"shape": [null], "dtype": "str"}} for plain text. `check` turns what a
caller sent into exactly those arrays, or raises an InputError that names the
input and the rule: a served model never sees a value it was not trained on.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from research.errors import InputError

MAX_TEXT_CHARS = 20_000  # per example: longer texts are refused, not silently truncated before tokenization
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def describe(signature: dict[str, dict]) -> str:
  """'image: uint8[N, 28, 28, 1]' for each input."""
  return ", ".join(f"{name}: {s['dtype']}[{', '.join('N' if d is None else str(d) for d in s['shape'])}]"
                   for name, s in signature.items())


def check(signature: dict[str, dict], given: dict[str, Any]) -> dict[str, np.ndarray]:
  """The inputs as the signature's arrays (one batch, first dimension N); raises InputError on any mismatch."""
  missing, extra = sorted(set(signature) - set(given)), sorted(set(given) - set(signature))
  if missing or extra:
    problem = f"missing input {missing[0]!r}" if missing else f"unknown input {extra[0]!r}"
    raise InputError(f"{problem}; the model takes {describe(signature)}.")
  arrays = {name: _array(name, spec, given[name]) for name, spec in signature.items()}
  sizes = {name: len(a) for name, a in arrays.items()}
  if len(set(sizes.values())) > 1:
    raise InputError(f"inputs have different numbers of examples: {sizes}.")
  if not next(iter(sizes.values()), 1):
    raise InputError("no examples: send at least one.")
  return arrays


def _array(name: str, spec: dict, value: Any) -> np.ndarray:
  shape, dtype = list(spec["shape"]), spec["dtype"]
  if dtype == "str":
    return _texts(name, value)
  try:
    array = np.asarray(value)
  except (ValueError, TypeError):
    raise InputError(f"input {name!r} is not a regular array: every example must have the shape "
                     f"{_example_shape(shape)}.") from None
  kind = array.dtype.kind
  if kind not in "biuf":  # booleans, integers and floats: not strings, objects (ragged lists) or complex numbers
    raise InputError(f"input {name!r} must hold numbers ({dtype}), got {array.dtype}.")
  if array.ndim != len(shape) or list(array.shape[1:]) != shape[1:]:
    raise InputError(f"input {name!r} has shape {list(array.shape)}; the model takes {dtype}"
                     f"[N, {', '.join(map(str, shape[1:]))}] (N examples of {_example_shape(shape)}).")
  target = _numpy_dtype(dtype)
  if kind == "f" and not np.isfinite(array).all():
    raise InputError(f"input {name!r} holds NaN or infinite values.")
  if target.kind in "iu" and array.dtype != target and array.size:  # (an array of the target type fits it)
    low, high = _integer_range(target)
    if array.min() < low or array.max() > high:
      raise InputError(f"input {name!r} has values in [{array.min()}, {array.max()}]; {dtype} takes "
                       f"{low} to {high}" + (" (pixels in 0-255)." if dtype == "uint8" else "."))
    if kind == "f" and not np.all(array == np.round(array)):
      raise InputError(f"input {name!r} must hold whole numbers ({dtype}), got fractions.")
  return array.astype(target, copy=False)


# Looked up once per dtype: numpy's own lookups were a third of `check`'s time for a served image.
@functools.cache
def _numpy_dtype(name: str) -> np.dtype:
  return np.dtype(name)


@functools.cache
def _integer_range(dtype: np.dtype) -> tuple[int, int]:
  info = np.iinfo(dtype)
  return int(info.min), int(info.max)


def _example_shape(shape: list) -> str:
  return "[" + ", ".join(map(str, shape[1:])) + "]" if len(shape) > 1 else "a scalar"


def _texts(name: str, value: Any) -> np.ndarray:
  texts = [value] if isinstance(value, str) else value
  if not isinstance(texts, (list, tuple, np.ndarray)) or not all(isinstance(t, str) for t in texts):
    raise InputError(f"input {name!r} takes text: a string or a list of strings.")
  too_long = next((i for i, t in enumerate(texts) if len(t) > MAX_TEXT_CHARS), None)
  if too_long is not None:
    raise InputError(f"input {name!r}: example {too_long} has {len(texts[too_long])} characters; at most "
                     f"{MAX_TEXT_CHARS} are accepted.")
  out = np.empty(len(texts), dtype=object)
  out[:] = list(texts)
  return out


def read(signature: dict[str, dict], paths: Sequence[str]) -> tuple[list[str], dict[str, np.ndarray]]:
  """The CLI's inputs: (a name per example, the raw batch). A text model takes texts (or `.txt` files of one text
  per line); an image model takes image files and `.npy` arrays of one or more examples."""
  if len(signature) != 1:
    raise InputError(f"the command line feeds models of one input; this one takes {describe(signature)}.")
  (name, spec), = signature.items()
  if spec["dtype"] == "str":
    names, texts = [], []
    for arg in paths:
      lines = Path(arg).read_text().splitlines() if arg.endswith(".txt") and Path(arg).is_file() else [arg]
      lines = [line for line in lines if line.strip()]
      names += [f"{arg}:{i + 1}" if len(lines) > 1 or arg.endswith(".txt") else _short(arg) for i in range(len(lines))]
      texts += lines
    return names, {name: _texts(name, texts)}
  names, examples = [], []
  for arg in paths:
    path = Path(arg)
    if not path.is_file():
      raise InputError(f"{arg} is not a file; give image files or .npy arrays.")
    batch = _npy(path, spec) if path.suffix == ".npy" else _image(path, spec)
    names += [f"{arg}[{i}]" if len(batch) > 1 else arg for i in range(len(batch))]
    examples.append(batch)
  return names, {name: np.concatenate(examples)}


def _short(text: str) -> str:
  return text if len(text) <= 40 else text[:37] + "..."


def _npy(path: Path, spec: dict) -> np.ndarray:
  try:
    array = np.load(path, allow_pickle=False)
  except (ValueError, OSError) as e:
    raise InputError(f"{path} is not a readable .npy array ({e}).") from None
  example = list(spec["shape"][1:])
  return array[None] if list(array.shape) == example else array


def _image(path: Path, spec: dict) -> np.ndarray:
  from PIL import Image, UnidentifiedImageError

  if path.suffix.lower() not in IMAGE_SUFFIXES:
    raise InputError(f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)}) or a .npy array.")
  shape = spec["shape"]
  if len(shape) != 4:
    raise InputError(f"{path}: this model takes {describe({'input': spec})}, not images.")
  height, width, channels = shape[1:]
  try:
    with Image.open(path) as image:
      pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
  except (UnidentifiedImageError, OSError) as e:
    raise InputError(f"{path} cannot be read as an image ({e}).") from None
  if pixels.shape[:2] != (height, width):
    raise InputError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]} pixels; the model takes {width}x{height}: "
                     f"resize it first.")
  return pixels.reshape(1, height, width, channels)
