"""scripts/runs.py's table: one row per run with the config keys that differ between runs, each chosen metric's
final value and, for eval metrics, its best (`best/eval/accuracy`, the tag the HParams dashboard shows too),
the run's progress and its wall time. Markdown for reading, CSV for spreadsheets and pandas."""

from __future__ import annotations

import csv
import io
import json

from research import runs as runs_lib
from research.errors import ConfigError

FORMATS = ("markdown", "csv")


def default_metrics(runs: list[runs_lib.Run]) -> list[str]:
  """Every eval metric any run logged, then train/loss."""
  tags = sorted({tag for run in runs for tag in run.curves if tag.startswith("eval/")})
  return tags + ["train/loss"]


def columns(runs: list[runs_lib.Run], metrics: list[str]) -> list[str]:
  shown = []
  for tag in metrics:
    shown += [tag, f"best/{tag}"] if tag.startswith("eval/") else [tag]
  return ["run", *runs_lib.differing(runs), *shown, "status", "wall_time"]


def row(run: runs_lib.Run, metrics: list[str]) -> dict:
  """A run's values by column; a metric it did not log is None."""
  values = {"run": run.name, **run.config}
  final, best = run.final, run.best
  for tag in metrics:
    values[tag] = final.get(tag)
    values[f"best/{tag}"] = best[tag][1] if tag in best else None
  values["status"] = "done" if run.finished else f"step {run.step}/{run.total_steps or '?'}"
  values["wall_time"] = run.wall_time
  return values


def _is_metric(column: str, metrics: list[str]) -> bool:
  return column.removeprefix("best/") in metrics


def sort(rows: list[dict], column: str, all_columns: list[str], metrics: list[str], config: dict,
         reverse: bool = False) -> list[dict]:
  """Rows by `column`: metrics best first (higher accuracy, lower loss), anything else ascending; runs without
  the value last."""
  if column not in all_columns:
    raise ConfigError(f"--sort {column!r} is not a column; choose one of: {', '.join(all_columns)}.")
  descending = _is_metric(column, metrics) and runs_lib.higher_is_better(column.removeprefix("best/"), config)
  present = [r for r in rows if r.get(column) is not None]
  ordered = sorted(present, key=lambda r: _sort_key(r[column]), reverse=descending != reverse)
  return ordered + [r for r in rows if r.get(column) is None]


def _sort_key(value):
  return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def _text(value, column: str, for_csv: bool) -> str:
  if value is None:
    return ""
  if column == "wall_time":
    if for_csv:
      return f"{value:.1f}"
    seconds = round(value)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
  if isinstance(value, float) and not for_csv:
    return f"{value:.4g}"
  if isinstance(value, (list, dict)):
    return json.dumps(value)
  return str(value)


def markdown(rows: list[dict], all_columns: list[str]) -> str:
  cells = [[_text(r.get(c), c, False).replace("|", "\\|") for c in all_columns] for r in rows]
  right = [any(isinstance(r.get(c), (int, float)) for r in rows) for c in all_columns]
  widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(all_columns)]
  pad = lambda text, i: text.rjust(widths[i]) if right[i] else text.ljust(widths[i])
  lines = ["| " + " | ".join(pad(c, i) for i, c in enumerate(all_columns)) + " |",
           "|" + "|".join(("-" * (w + 1) + ":") if right[i] else "-" * (w + 2) for i, w in enumerate(widths)) + "|"]
  lines += ["| " + " | ".join(pad(text, i) for i, text in enumerate(line)) + " |" for line in cells]
  return "\n".join(lines)


def csv_text(rows: list[dict], all_columns: list[str]) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(all_columns)
  for r in rows:
    writer.writerow([_text(r.get(c), c, True) for c in all_columns])
  return out.getvalue().rstrip("\n")


def render(runs: list[runs_lib.Run], metrics: list[str] | None = None, sort_by: str = "", reverse: bool = False,
           fmt: str = "markdown") -> str:
  """The table of `runs`, sorted by `sort_by` if given, as markdown or CSV."""
  if fmt not in FORMATS:
    raise ConfigError(f"--format {fmt!r}; choose one of {', '.join(FORMATS)}.")
  metrics = metrics or default_metrics(runs)
  all_columns = columns(runs, metrics)
  rows = [row(run, metrics) for run in runs]
  if sort_by:
    rows = sort(rows, sort_by, all_columns, metrics, runs[0].config, reverse)
  return markdown(rows, all_columns) if fmt == "markdown" else csv_text(rows, all_columns)
