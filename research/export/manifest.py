"""manifest.json: everything a server or an app needs to use an export directory, and its checksums. ::

    {"manifest_version", "created", "model": {"name", "config"}, "config",
     "source": {"workdir", "step", "eval"},
     "inputs": [{"name", "shape": [null, ...], "dtype"}], "outputs": [...],
     "preprocessing": {"clean": {"pipeline", "ops"}, "pipeline", "ops": [{"name", "params", "state", "file"}],
                       "raw_inputs"},
     "labels", "reference": JAX's {"accuracy", "latency_ms"},
     "artifacts": {format: {"path", "files", "bytes", "parity", "accuracy", "latency_ms", ...}},
     "generation": a language model's prefill/decode functions and tokenizer (research/export/generation.py),
     "versions": {package: version}, "machine", "files": {relative path: {"sha256", "bytes"}}}

`verify(directory)` recomputes every checksum: a changed, missing or unlisted
file is a failure that names the file.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import inspect
import json
import os
import platform
from pathlib import Path

import numpy as np

from research import atomic
from research.errors import read_json_object

MANIFEST = "manifest.json"
ASSETS = "assets"  # files of fitted preprocessing ops (e.g. tokenizer.json), copied from the workdir
VERSION = 1
PACKAGES = ("jax", "jaxlib", "flax", "numpy", "ml-collections", "jax2onnx", "onnx", "onnxruntime",
            "tensorflow", "tensorflow-cpu", "ai-edge-litert")


class VerifyError(RuntimeError):
  """An export directory does not match its manifest; the message names every bad file."""


def sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _files(directory: Path) -> list[str]:
  return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                if p.is_file() and p.relative_to(directory).as_posix() != MANIFEST)


def checksums(directory: Path) -> dict:
  return {name: {"sha256": sha256(directory / name), "bytes": (directory / name).stat().st_size}
          for name in _files(directory)}


def versions() -> dict:
  import research

  found = {"python": platform.python_version(), "research": research.__version__}
  for package in PACKAGES:
    try:
      found[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      pass
  return found


def label_names(config, workdir: Path | None = None) -> list[str] | None:
  """The class names of the run's dataset, index by index: as recorded in the workdir, else the dataset's."""
  from research.data import spec as data_spec

  record = data_spec.read(workdir) if workdir else None
  return record["label_names"] if record else data_spec.label_names(config.data.name)


def _jsonable(value):
  if isinstance(value, (tuple, list)):
    return [_jsonable(v) for v in value]
  if isinstance(value, dict):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return value


def preprocessing(config, raw: dict[str, np.ndarray] | None = None, workdir: Path | None = None) -> dict:
  """The pipeline string and each op with every parameter resolved (defaults included).

  A fitted op (one with a `fit`, e.g. per-channel statistics) also gets the
  state it was fitted to, from WORKDIR/preprocess_state.json.
  """
  from research.data import ops
  from research.registry import OPS

  parse_op = getattr(ops, "parse_op", None) or ops._parse_op
  state_file = Path(workdir) / getattr(ops, "STATE_FILE", "preprocess_state.json") if workdir else None
  states = json.loads(state_file.read_text()) if state_file and state_file.is_file() else {}
  resolved = []
  for i, text in enumerate(filter(None, (part.strip() for part in config.data.preprocess.split("|")))):
    name, args, kwargs = parse_op(text)
    fn = OPS.get(name)
    fitted = hasattr(fn, "fit")
    call = fn.__call__ if fitted else fn
    bound = inspect.signature(call).bind(*([None] * (3 if fitted else 1)), *args, **kwargs)  # batch(, state, dir)
    bound.apply_defaults()
    skip = {"batch", "state", "assets_dir"}
    params = {k: v for k, v in bound.arguments.items() if k not in skip and k != "self"}
    doc = " ".join((inspect.getdoc(fn) or "").split("\n\n")[0].split())
    entry = {"name": name, "params": _jsonable(params), "doc": doc}
    if fitted:
      entry["state"] = _jsonable(states.get(f"{i}:{name}"))
      if isinstance(entry["state"], dict) and entry["state"].get("file"):  # copied by copy_assets
        entry["file"] = f"{ASSETS}/{entry['state']['file']}"
    resolved.append(entry)
  result = {"clean": cleaning(config), "pipeline": config.data.preprocess, "ops": resolved,
            "input_key": config.data.input_key}
  if raw:
    from research.data import spec as data_spec

    result["raw_inputs"] = {k: {"shape": [None, *c["shape"]], "dtype": c["dtype"]}  # text: "str"
                            for k, c in data_spec.columns(raw).items()}
  return result


def cleaning(config) -> dict:
  """The cleaning training applied to whole splits before preprocessing (research/data/clean.py), each op with
  its parameters resolved: text normalization rewrites every example, so a server applies it too."""
  from research.data import clean

  ops = []
  for text, (fn, args, kwargs) in zip(filter(None, (p.strip() for p in config.data.clean.split("|"))),
                                      clean.parse(config.data.clean)):
    bound = inspect.signature(fn).bind(None, *args, **kwargs)
    bound.apply_defaults()
    params = {k: v for k, v in list(bound.arguments.items())[1:]}
    ops.append({"name": text.split("(")[0].strip(), "params": _jsonable(params),
                "doc": " ".join((inspect.getdoc(fn) or "").split("\n\n")[0].split())})
  return {"pipeline": config.data.clean, "ops": ops}


def copy_assets(config, workdir: Path, directory: Path) -> list[str]:
  """Copies the files fitted preprocessing ops wrote into the workdir (e.g. tokenizer.json) to DIR/assets/."""
  import shutil

  from research.data import ops

  state_file = Path(workdir) / getattr(ops, "STATE_FILE", "preprocess_state.json")
  states = json.loads(state_file.read_text()) if state_file.is_file() else {}
  copied = []
  for state in states.values():
    name = state.get("file") if isinstance(state, dict) else None
    if name and (Path(workdir) / name).is_file():
      (directory / ASSETS).mkdir(exist_ok=True)
      shutil.copyfile(Path(workdir) / name, directory / ASSETS / name)
      copied.append(f"{ASSETS}/{name}")
  return copied


def eval_metrics(workdir: Path, meta: dict) -> tuple[dict, str | None]:
  """The eval metrics of the checkpoint's step ({"accuracy": ...}): from its metadata, else WORKDIR/metrics.jsonl."""
  if meta.get("eval"):
    return _jsonable(meta["eval"]), "checkpoint"
  path, found = Path(workdir) / "metrics.jsonl", {}
  if path.is_file() and meta.get("step") is not None:
    for line in path.read_text().splitlines():
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue
      if row.get("step") == meta["step"]:
        found.update({k.removeprefix("eval/"): v for k, v in row.items() if k.startswith("eval/")})
  return found, ("metrics.jsonl" if found else None)


def build(ex, workdir: Path, artifacts: dict, raw: dict[str, np.ndarray] | None = None,
          reference: dict | None = None, generation: dict | None = None) -> dict:
  from research.config import to_dict

  config = to_dict(ex.config)
  metrics, metrics_from = eval_metrics(workdir, ex.meta)
  outputs = [{"name": n, "shape": [None, *s.shape[1:]], "dtype": str(s.dtype)}
             for n, s in zip(ex.output_names, ex.output_structs(1))]
  return {
      "manifest_version": VERSION,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "model": {"name": ex.name, "config": config.get("model", {}),
                # "__call__": model(x) on the preprocessed data; "export_fn": the model's own export function
                # (e.g. a language model's logits, a VAE's decoder), whose inputs need not be the data
                "function": "export_fn" if ex.batch_inputs is not None else "__call__"},
      "config": config,
      "source": {"workdir": str(Path(workdir).resolve()), "step": ex.meta.get("step"),
                 "eval": metrics,
                 "eval_from": metrics_from},
      "inputs": [s.to_json() for s in ex.inputs],
      "outputs": outputs,
      "preprocessing": preprocessing(ex.config, raw, workdir),
      "labels": label_names(ex.config, workdir),
      "reference": _jsonable(reference or {}),
      "artifacts": _jsonable(artifacts),
      **({"generation": _jsonable(generation)} if generation else {}),
      "versions": versions(),
      "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count()},
  }


def write(directory: Path, manifest: dict) -> Path:
  """Adds the checksums of every file now in `directory` and writes manifest.json atomically."""
  manifest = {**manifest, "files": checksums(directory)}
  path = directory / MANIFEST
  atomic.write_text(path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
  return path


def read(directory: Path) -> dict:
  """DIR/manifest.json; a ConfigError where DIR holds none (it is not an export directory)."""
  return read_json_object(Path(directory) / MANIFEST, "a manifest", f"is {directory} an export directory?")


def verify(directory: str | Path) -> dict:
  """Recomputes every sha256; returns the manifest, or raises VerifyError naming each bad file."""
  directory = Path(directory)
  manifest = read(directory)
  listed = manifest.get("files")
  if not isinstance(listed, dict) or not listed:
    raise VerifyError(f"{directory / MANIFEST} lists no files.")
  problems = []
  for name, entry in sorted(listed.items()):
    path = directory / name
    if not path.is_file():
      problems.append(f"{name}: missing")
      continue
    actual = sha256(path)
    listed_sha = entry.get("sha256") if isinstance(entry, dict) else None
    if actual != listed_sha:
      problems.append(f"{name}: sha256 mismatch (manifest {listed_sha}, file {actual}): the file was changed")
  for name in _files(directory):
    if name not in listed:
      problems.append(f"{name}: not listed in the manifest")
  if problems:
    raise VerifyError(f"{directory} does not match its manifest:\n  " + "\n  ".join(problems))
  return manifest
