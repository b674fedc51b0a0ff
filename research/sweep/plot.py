"""scripts/runs.py --plot: the curves of chosen metrics, one panel per metric and one line per run, as a PNG.

Lines are labelled by the config values that differ between runs (the run's name when none do). Needs
matplotlib (the `plot` extra: `pip install -e '.[plot]'`).
"""

from __future__ import annotations

from pathlib import Path

from research import runs as runs_lib
from research.errors import ConfigError


def label(run: runs_lib.Run, keys: list[str]) -> str:
  if not keys:
    return run.name
  return ", ".join(f"{k.rsplit('.', 1)[-1]}={run.config.get(k)}" for k in keys)


def plot(runs: list[runs_lib.Run], tags: list[str], out: str | Path) -> Path:
  """Draws `tags` of `runs` into the PNG `out`; returns its path."""
  logged = sorted({tag for run in runs for tag in run.curves})
  unknown = [t for t in tags if t not in logged]
  if unknown:
    raise ConfigError(f"--plot {','.join(unknown)}: no run logged {'it' if len(unknown) == 1 else 'them'}; "
                      f"logged metrics: {', '.join(logged)}.")
  try:
    import matplotlib
  except ImportError:
    raise ConfigError("--plot needs matplotlib: pip install -e '.[plot]' (or pip install matplotlib).") from None
  matplotlib.use("Agg")  # files only, no display
  from matplotlib import pyplot

  keys = runs_lib.differing(runs)
  figure, axes = pyplot.subplots(1, len(tags), figsize=(5.5 * len(tags), 4), squeeze=False)
  for axis, tag in zip(axes[0], tags):
    for run in runs:
      points = run.curves.get(tag, [])
      if points:
        axis.plot([s for s, _ in points], [v for _, v in points], marker="o" if len(points) < 30 else None,
                  markersize=3, label=label(run, keys))
    axis.set_title(tag)
    axis.set_xlabel("step")
    axis.grid(alpha=0.3)
  axes[0][0].legend(fontsize="small")
  figure.tight_layout()
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  figure.savefig(out, dpi=100)
  pyplot.close(figure)
  return out
