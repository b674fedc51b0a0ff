"""Parity: an artifact, run in its own runtime, against the JAX model on the same real inputs."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

DEFAULT_TOLERANCE = 1e-4  # max abs difference on float32 outputs (logits)
DEFAULT_BATCH_SIZES = (1, 64)
DEFAULT_MAX_ACCURACY_DROP = 0.01  # a quantized artifact may lose at most 1 point of test accuracy


class ParityError(RuntimeError):
  """An artifact's outputs differ from JAX's by more than the tolerance; the message is the report."""

  def __init__(self, report: dict):
    self.report = report
    super().__init__(format_report(report))


def compare(fmt: str, reference: Callable[..., list[np.ndarray]], candidate: Callable[..., list[np.ndarray]],
            batches: Sequence[Sequence[np.ndarray]], output_names: Sequence[str],
            tolerance: float = DEFAULT_TOLERANCE, enforce: bool = True) -> dict:
  """Runs both on every batch; returns the report, or raises ParityError if any output is off.

  `enforce=False` (quantized artifacts) records the differences without failing on them.
  """
  rows = []
  for inputs in batches:
    want, got = reference(*inputs), candidate(*inputs)
    if len(got) != len(want):
      raise ParityError({"format": fmt, "tolerance": tolerance, "passed": False, "batches": [],
                         "problem": f"{len(got)} outputs, expected {len(want)}"})
    for name, w, g in zip(output_names, want, got):
      g = np.asarray(g)
      row = {"batch_size": int(len(inputs[0])), "output": name}
      if g.shape != w.shape:
        row.update(max_abs_diff=None, passed=False, problem=f"shape {list(g.shape)}, expected {list(w.shape)}")
      else:
        diff = float(np.max(np.abs(g.astype(np.float64) - w.astype(np.float64)))) if w.size else 0.0
        row.update(max_abs_diff=diff, passed=bool(diff <= tolerance and np.isfinite(diff)))
        if w.ndim == 2 and w.shape[1] > 1:  # class scores: how often the predicted class agrees
          row["argmax_agreement"] = float(np.mean(np.argmax(g, -1) == np.argmax(w, -1)))
      rows.append(row)
  diffs = [r["max_abs_diff"] for r in rows if r["max_abs_diff"] is not None]
  report = {"format": fmt, "tolerance": tolerance if enforce else None, "passed": all(r["passed"] for r in rows),
            "max_abs_diff": max(diffs) if diffs else None, "batches": rows}
  if not enforce:
    report["passed"] = None  # not judged by the tolerance
    for r in rows:
      r["passed"] = None if r["max_abs_diff"] is not None else False
    if any(r["passed"] is False for r in rows):
      raise ParityError({**report, "passed": False})
  elif not report["passed"]:
    raise ParityError(report)
  return report


def format_report(report: dict) -> str:
  tolerance = f"tolerance {report['tolerance']:g} max abs diff vs JAX" if report["tolerance"] else "vs JAX"
  lines = [f"check failed for {report['format']} ({tolerance}):"]
  if "problem" in report:
    lines.append(f"  {report['problem']}")
  for r in report["batches"]:
    detail = r.get("problem") or f"max abs diff {r['max_abs_diff']:.3g}"
    if "argmax_agreement" in r:
      detail += f", argmax agreement {r['argmax_agreement']:.2%}"
    verdict = {True: "ok", False: "FAILED", None: ""}[r["passed"]]
    lines.append(f"  batch {r['batch_size']:>4} {r['output']}: {detail} {verdict}".rstrip())
  return "\n".join(lines)


def summary(report: dict) -> str:
  sizes = ", ".join(str(b) for b in dict.fromkeys(r["batch_size"] for r in report["batches"]))
  return f"max abs diff {report['max_abs_diff']:.2g} <= {report['tolerance']:g} at batch {sizes}"
