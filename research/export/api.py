"""`export()`: a training run's checkpoint -> artifacts in several formats, each parity-checked, + manifest.json.

The export directory is built beside its destination and moved into place only
when every artifact has passed its parity check, so a directory with a
manifest.json is always a complete, checked export. A failed check leaves the
artifacts in `<out>.failed/` with `parity.json`, and raises ParityError.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from research.errors import ConfigError
from research.export import manifest as manifest_lib
from research.export import model as model_lib
from research.export import parity
from research.registry import Registry

DEFAULT_BATCH_SIZES = (1, 64)


@dataclasses.dataclass(frozen=True)
class Format:
  name: str
  module: str  # implements export(ex, out, **options) -> artifact dict, and load(out, artifact) -> runner
  extra: str | None  # the pip extra that installs its packages
  packages: tuple[str, ...]  # importable modules it needs
  description: str

  def missing(self) -> list[str]:
    return [p for p in self.packages if importlib.util.find_spec(p) is None]

  def implementation(self):
    return importlib.import_module(self.module)


# In export order: tflite converts the saved_model exported before it in the same run.
ORDER = [
    Format("onnx", "research.export.onnx", "onnx", ("jax2onnx", "onnx", "onnxruntime"),
           "model.onnx via jax2onnx, dynamic batch; checked in onnxruntime"),
    Format("stablehlo", "research.export.stablehlo", None, (),
           "stablehlo/ via jax.export (cpu, cuda), weights beside it, dynamic batch; checked after deserialize"),
    Format("saved_model", "research.export.tf", "tf", ("tensorflow",),
           "saved_model/ via jax2tf native serialization (cpu, cuda), serving_default, dynamic batch; checked in TF"),
    Format("tflite", "research.export.tflite", "tf", ("tensorflow", "ai_edge_litert"),
           "model.tflite converted from that SavedModel, dynamic or fixed batch; checked in the LiteRT interpreter"),
]
FORMATS: Registry = Registry("export format")
for _f in ORDER:
  FORMATS.register(_f.name)(_f)


def parse_formats(formats: str | Sequence[str]) -> list[Format]:
  """'onnx,stablehlo' -> Formats, checked: known names, packages installed."""
  names = [n.strip() for n in (formats.split(",") if isinstance(formats, str) else formats) if n.strip()]
  if not names:
    raise ConfigError(f"No export format given; known: {', '.join(FORMATS.names())}.")
  chosen = [FORMATS.get(n) for n in dict.fromkeys(names)]
  chosen.sort(key=ORDER.index)
  for f in chosen:
    missing = f.missing()
    if missing:
      raise ConfigError(f"Format {f.name!r} needs {' and '.join(missing)} (not installed): "
                        f"install the {f.extra!r} extra, pip install -e '.[{f.extra}]'.")
  return chosen


def _check_out(out: Path, workdir: Path) -> None:
  if out.resolve() in (workdir.resolve(), *workdir.resolve().parents):
    raise ConfigError(f"--out {out} would replace the workdir {workdir}; give a directory inside or beside it.")
  if out.exists() and not out.is_dir():
    raise ConfigError(f"--out {out} is a file; give a directory.")
  if out.exists() and any(out.iterdir()) and not (out / manifest_lib.MANIFEST).exists():
    raise ConfigError(f"--out {out} is a non-empty directory without {manifest_lib.MANIFEST}; "
                      f"refusing to replace it (give a new or an export directory).")


def _log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def _replace(src: Path, dest: Path) -> None:
  """Moves directory `src` to `dest`, replacing an old `dest`."""
  old = dest.with_name(f".{dest.name}.old")
  shutil.rmtree(old, ignore_errors=True)
  if dest.exists():
    dest.rename(old)
  src.rename(dest)
  shutil.rmtree(old, ignore_errors=True)


def export(workdir: str | Path, *, step: str | int | None = "latest", formats: str | Sequence[str] = ("onnx",),
           out: str | Path | None = None, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
           tolerance: float = parity.DEFAULT_TOLERANCE, options: dict | None = None,
           log: Callable[[str], None] = _log) -> Path:
  """Exports the run in `workdir` to each format in `out` (default WORKDIR/export); returns `out`.

  `options` maps a format name to keyword arguments of its exporter. Raises
  ConfigError for bad arguments (before any work), ParityError if an artifact
  does not match JAX within `tolerance` on real test inputs at each batch size.
  """
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise ConfigError(f"Workdir {workdir} does not exist.")
  chosen = parse_formats(formats)
  options = dict(options or {})
  for name in options:
    if name not in {f.name for f in chosen}:
      raise ConfigError(f"Options for format {name!r} given, but it is not among the formats exported "
                        f"({', '.join(f.name for f in chosen)}).")
  batch_sizes = [int(b) for b in batch_sizes]
  if len(batch_sizes) < 1 or min(batch_sizes) < 1:
    raise ConfigError(f"Parity batch sizes must be positive integers, got {batch_sizes}.")
  out = Path(out) if out is not None else workdir / "export"
  _check_out(out, workdir)

  ex = model_lib.from_workdir(workdir, step)
  log(f"exporting {ex.name} from {workdir} at step {ex.meta.get('step')} to {out}: {', '.join(f.name for f in chosen)}")
  batches = model_lib.real_inputs(ex.config, "test", batch_sizes)
  reference = ex.reference()

  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(f".{out.name}.partial")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  artifacts = {}
  for f in chosen:
    impl = f.implementation()
    start = time.perf_counter()
    artifact = impl.export(ex, tmp, **options.get(f.name, {}))
    runner = impl.load(tmp, artifact)
    try:
      artifact["parity"] = parity.compare(f.name, reference, runner, batches, ex.output_names, tolerance)
    except parity.ParityError as e:
      failed = out.with_name(f"{out.name}.failed")
      (tmp / "parity.json").write_text(json.dumps(e.report, indent=2) + "\n")
      _replace(tmp, failed)
      e.args = (f"{e.args[0]}\nThe artifacts that failed are in {failed}.",)
      raise
    artifact["bytes"] = sum((tmp / name).stat().st_size for name in artifact["files"])
    artifact["seconds"] = round(time.perf_counter() - start, 2)
    artifacts[f.name] = artifact
    log(f"  {f.name}: {artifact['path']} ({artifact['bytes'] / 1e6:.2f} MB), {parity.summary(artifact['parity'])}")

  from research.data import get_split

  raw = {ex.config.data.input_key: get_split(ex.config.data.name, "test")[ex.config.data.input_key][:1]}
  manifest_lib.write(tmp, manifest_lib.build(ex, workdir, artifacts, raw))
  _replace(tmp, out)
  log(f"wrote {out / manifest_lib.MANIFEST}")
  return out


def verify(directory: str | Path) -> dict:
  directory = Path(directory)
  if not directory.is_dir():
    raise ConfigError(f"{directory} is not a directory.")
  try:
    return manifest_lib.verify(directory)
  except FileNotFoundError as e:
    raise ConfigError(str(e)) from None
