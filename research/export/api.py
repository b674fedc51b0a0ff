"""`export()`: a training run's checkpoint -> checked artifacts in several formats + manifest.json.

For each format: export, load the artifact back in its own runtime, and check it
on real test inputs. Float artifacts must match JAX within the tolerance at each
parity batch size; quantized ones must keep their float base's test accuracy
within `max_accuracy_drop`. Each artifact's test accuracy (for classifiers) and
latency are recorded too.

The export directory is built beside its destination and moved into place only
when every artifact has passed, so a directory with a manifest.json is always a
complete, checked export. A failed check leaves the artifacts in `<out>.failed/`
with `check.json`, and raises ParityError.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from research.errors import ConfigError, DataUnavailableError, brief
from research.export import generation as generation_lib
from research.export import manifest as manifest_lib
from research.export import measure
from research.export import model as model_lib
from research.export import parity
from research.export.parity import DEFAULT_BATCH_SIZES, DEFAULT_MAX_ACCURACY_DROP  # noqa: F401  (re-exported)
from research.export.formats import FORMATS, parse as parse_formats  # noqa: F401  (re-exported)



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


def _fail(tmp: Path, out: Path, error: parity.ParityError) -> None:
  failed = out.with_name(f"{out.name}.failed")
  (tmp / "check.json").write_text(json.dumps(error.report, indent=2) + "\n")
  _replace(tmp, failed)
  error.args = (f"{error.args[0]}\nThe artifacts that failed are in {failed}.",)
  raise error


def _compare_with_base(artifact: dict, base: dict, base_name: str, max_drop: float) -> dict:
  """A quantized artifact against its float base: size, accuracy and latency ratios; raises if accuracy drops."""
  drop = base["accuracy"] - artifact["accuracy"]
  speedups = {b: round(base["latency_ms"][b]["p50"] / artifact["latency_ms"][b]["p50"], 3)
              for b in artifact["latency_ms"] if b in base["latency_ms"]}
  report = {"format": base_name, "size_ratio": round(base["bytes"] / artifact["bytes"], 3),
            "float_accuracy": base["accuracy"], "accuracy_drop": round(drop, 6), "max_accuracy_drop": max_drop,
            "speedup_p50": speedups, "passed": drop <= max_drop}
  if not report["passed"]:
    raise parity.ParityError({**artifact["parity"], "passed": False, "problem":
                              f"test accuracy {artifact['accuracy']:.4f} is {drop * 100:.2f} points below "
                              f"{base_name}'s {base['accuracy']:.4f} (at most {max_drop * 100:.2f} allowed)"})
  return report


def export(workdir: str | Path, *, step: str | int | None = "latest", formats: str | Sequence[str] = ("onnx",),
           out: str | Path | None = None, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
           tolerance: float = parity.DEFAULT_TOLERANCE, max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP,
           accuracy_examples: int | None = None, options: dict | None = None,
           log: Callable[[str], None] = _log) -> Path:
  """Exports the run in `workdir` to each format in `out` (default WORKDIR/export); returns `out`.

  `options` maps a format name to keyword arguments of its exporter. Raises
  ConfigError for bad arguments (before any work), ParityError when an artifact
  fails its check.
  """
  workdir = Path(workdir)
  if not workdir.is_dir():
    raise ConfigError(f"--workdir {workdir} does not exist: give the workdir of a training run.")
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

  from research.data import spec as data_spec
  from research.train import experiment

  model, config, meta = model_lib.trained(workdir, step)
  preprocess = experiment.preprocessor(config, workdir)
  test = experiment.test_split(config, log)  # loaded once: the split training evaluates, cleaned as in training
  examples = test
  if test is None:
    record = data_spec.read(workdir)
    if record is None:
      raise DataUnavailableError(f"{config.data.name} cannot be loaded and {workdir} has no {data_spec.FILE} "
                                 f"(a run trained before it was recorded): make the dataset reachable.")
    examples = data_spec.synthetic(record["columns"], sum(batch_sizes), seed=1)
    log("checking every artifact on synthetic inputs; test accuracy is not measured")
  ex = model_lib.for_model(model, config, meta, preprocess, examples)
  classifier = ex.batch_inputs is None and ex.output_structs(1)[0].ndim == 2  # class scores of its data
  evaluation = None
  if classifier and test is not None:
    evaluation = model_lib.labeled_inputs(config, "test", accuracy_examples, preprocess, arrays=test)
  quantized = [f.name for f in chosen if f.quantized]
  if quantized and evaluation is None:
    why = "no test data is reachable" if classifier else f"{ex.name} on {config.data.name} is not a classifier"
    raise ConfigError(f"{', '.join(quantized)} are checked by test accuracy on labelled test data, and {why}. "
                      f"Export float formats.")
  log(f"exporting {ex.name} from {workdir} at step {ex.meta.get('step')} to {out}: {', '.join(f.name for f in chosen)}")
  batches = ex.inputs_from(examples, batch_sizes)
  reference = ex.reference()
  summary = {"runtime": "jax.jit (this machine's default backend)", "latency_ms": measure.latencies(reference, batches)}
  if evaluation:
    summary["accuracy"] = measure.accuracy(reference, *evaluation)
    summary["evaluation"] = {"split": "test", "examples": int(len(evaluation[1]))}
  elif classifier:
    summary["evaluation"] = {"skipped": "no test data was reachable"}

  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(f".{out.name}.partial")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  artifacts = {}
  for f in chosen:
    start = time.perf_counter()
    try:
      artifact = f.export(ex, tmp, **options.get(f.name, {}))
    except Exception as e:  # a model the format's converter cannot express: say which and why, in one line
      shutil.rmtree(tmp, ignore_errors=True)
      others = [n for n in FORMATS.names() if n != f.name and FORMATS.get(n).base != f.name]
      hint = ""
      if f.name in ("tflite", "tflite_int8") and options.get(f.name, {}).get("batch") is None:
        hint = " A fixed batch (--tflite-batch N) converts without dynamic shapes and may succeed."
      raise ConfigError(f"Format {f.name!r} cannot export model {ex.name!r}: {_reason(e).rstrip('.')}.{hint} "
                        f"Other formats may: {', '.join(others)}.") from e
    run = f.load(tmp, artifact)
    try:
      artifact["parity"] = parity.compare(f.name, reference, run, batches, ex.output_names,
                                          tolerance=tolerance, enforce=not f.quantized)
      artifact["bytes"] = sum((tmp / name).stat().st_size for name in artifact["files"])
      artifact["latency_ms"] = measure.latencies(run, batches)
      if evaluation:
        artifact["accuracy"] = measure.accuracy(run, *evaluation)
      if f.quantized:
        artifact["vs_float"] = _compare_with_base(artifact, artifacts[f.base], f.base, max_accuracy_drop)
    except parity.ParityError as e:
      _fail(tmp, out, e)
    artifact["seconds"] = round(time.perf_counter() - start, 2)
    artifacts[f.name] = artifact
    log(f"  {f.name}: " + _describe(artifact))

  generation = None
  if generation_lib.supported(model):  # a language model: prefill + cached decode, checked against the model
    generation = generation_lib.export(model, tmp)
    generation["check"] = generation_lib.check(model, tmp, generation)
    log(f"  generate: {generation['prefill']}, {generation['decode']}: greedy tokens equal the model's "
        f"({generation['check']['greedy_tokens_checked']} tokens, past one window)")
  # The raw inputs a caller sends: the data's columns, for a model of its data; an export function (a language
  # model's logits, a VAE's decoder) takes its own inputs, which the manifest's `inputs` list.
  raw = None if ex.batch_inputs is not None else {k: v[:1] for k, v in examples.items() if k != config.data.label_key}
  manifest_lib.copy_assets(ex.config, workdir, tmp)  # e.g. the fitted tokenizer.json: a server needs it
  manifest_lib.write(tmp, manifest_lib.build(ex, workdir, artifacts, raw, reference=summary, generation=generation))
  _replace(tmp, out)
  log(f"wrote {out / manifest_lib.MANIFEST}")
  return out


def _reason(error: BaseException) -> str:
  """A converter's reason in one line: MLIR-based converters (TFLite) print pages of source locations
  followed by `error: <reason>`; take the first such reason, else the error's first line."""
  for line in str(error).splitlines():
    if "error: " in line:
      reason = line.rsplit("error: ", 1)[1].strip()
      if reason and not reason.startswith("failed while converting"):
        return f"{error.__class__.__name__}: {reason}"
  return brief(error)


def _describe(artifact: dict) -> str:
  parts = [f"{artifact['path']} ({artifact['bytes'] / 1e6:.2f} MB)"]
  if "vs_float" in artifact:
    v = artifact["vs_float"]
    parts.append(f"{v['size_ratio']:.2f}x smaller than {v['format']}, accuracy {artifact['accuracy']:.2%} "
                 f"({v['format']} {v['float_accuracy']:.2%}), max abs diff {artifact['parity']['max_abs_diff']:.2g}")
  else:
    parts.append(parity.summary(artifact["parity"]))
    if "accuracy" in artifact:
      parts.append(f"accuracy {artifact['accuracy']:.2%}")
  parts.append("p50 " + ", ".join(f"{v['p50']:.3g} ms at batch {b}" for b, v in artifact["latency_ms"].items()))
  return ", ".join(parts)


def verify(directory: str | Path) -> dict:
  directory = Path(directory)
  if not directory.is_dir():
    raise ConfigError(f"{directory} is not a directory.")
  return manifest_lib.verify(directory)  # a ConfigError where DIR has no readable manifest
