"""A sweep's plan: its runs, each a name and the `--config.KEY=VALUE` overrides that make it. Its flags::

    --grid 'optimizer.learning_rate=1e-3,3e-3'        every combination of the listed values
    --grid 'model.hidden_sizes=(512,256),(256,)'       values are split at commas outside brackets and quotes
    --random 8 --sample 'optimizer.learning_rate=loguniform(1e-4,1e-2)'
                                                       8 draws, the same ones for the same --seed
    distributions: uniform(a,b), loguniform(a,b), randint(a,b) (a to b inclusive), choice(v1,v2,...)

Grid and samples combine: each grid point with each of the N draws. A run's
name lists its varied values (`03-learning_rate=0.003,hidden_sizes=256`),
after its index in the plan so names are unique and sort in plan order.
Every run's overrides are applied to the config before anything starts, so a
bad key or value is one error naming it.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re

import numpy as np

from research import config as config_lib
from research.errors import ConfigError

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
SPEC = re.compile(r"([A-Za-z_][\w.]*)=(.*)", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  overrides: tuple[str, ...]  # `--config.KEY=VALUE`, the varied keys only


def split_values(text: str) -> list[str]:
  """'(512,256),(256,)' -> ['(512,256)', '(256,)']: commas inside brackets or quotes do not split."""
  values, depth, quote, current = [], 0, "", ""
  for char in text:
    if quote:
      quote = "" if char == quote else quote
    elif char in "'\"":
      quote = char
    elif char in "([{":
      depth += 1
    elif char in ")]}":
      depth -= 1
    elif char == "," and depth == 0:
      values.append(current.strip())
      current = ""
      continue
    current += char
  values.append(current.strip())
  return values


def _key_and_text(spec: str, flag: str, example: str) -> tuple[str, str]:
  match = SPEC.fullmatch(spec.strip())
  if not match or not match.group(2).strip():
    raise ConfigError(f"{flag} {spec!r}: write it as {flag} '{example}'.")
  return match.group(1), match.group(2).strip()


def parse_grid(spec: str) -> tuple[str, list[str]]:
  """'KEY=V1,V2' -> (KEY, [V1, V2])."""
  key, text = _key_and_text(spec, "--grid", "optimizer.learning_rate=1e-3,3e-3")
  values = split_values(text)
  if "" in values:
    raise ConfigError(f"--grid {spec!r} has an empty value; separate values with single commas, e.g. "
                      f"--grid '{key}=1,2'.")
  if len(set(values)) < len(values):
    raise ConfigError(f"--grid {spec!r} lists a value twice; list each value once.")
  return key, values


@dataclasses.dataclass(frozen=True)
class Distribution:
  kind: str
  args: tuple

  def draw(self, rng: np.random.Generator):
    low, high = self.args[:2] if self.kind != "choice" else (None, None)
    if self.kind == "uniform":
      return float(rng.uniform(low, high))
    if self.kind == "loguniform":
      return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    if self.kind == "randint":
      return int(rng.integers(low, high + 1))
    return self.args[int(rng.integers(len(self.args)))]


def parse_sample(spec: str) -> tuple[str, Distribution]:
  """'KEY=loguniform(1e-4,1e-2)' -> (KEY, Distribution)."""
  example = "optimizer.learning_rate=loguniform(1e-4,1e-2)"
  key, text = _key_and_text(spec, "--sample", example)
  match = re.fullmatch(r"(\w+)\((.*)\)", text, re.DOTALL)
  kinds = ", ".join(f"{k}(...)" for k in DISTRIBUTIONS)
  if not match or match.group(1) not in DISTRIBUTIONS:
    raise ConfigError(f"--sample {spec!r}: the value must be one of {kinds}, e.g. --sample '{example}'.")
  kind, args = match.group(1), split_values(match.group(2))
  if kind == "choice":
    if "" in args:
      raise ConfigError(f"--sample {spec!r}: choice(...) needs values separated by single commas.")
    return key, Distribution(kind, tuple(args))
  try:
    numbers = tuple(int(a) if kind == "randint" else float(a) for a in args)
  except ValueError:
    numbers = ()
  if len(numbers) != 2 or not numbers[0] < numbers[1] or (kind == "loguniform" and numbers[0] <= 0):
    need = "two integers low < high" if kind == "randint" else "two numbers low < high"
    raise ConfigError(f"--sample {spec!r}: {kind}(low,high) needs {need}"
                      f"{', both > 0' if kind == 'loguniform' else ''}.")
  return key, Distribution(kind, numbers)


def _value_text(value) -> str:
  """A value as an override's text (floats in full: the run gets exactly what was drawn)."""
  return repr(value) if isinstance(value, float) else str(value)


def _name_part(value) -> str:
  """A value as a short, filesystem-safe piece of a run's name: 0.000312, 512x256, adam."""
  text = f"{value:.3g}" if isinstance(value, float) else str(value)
  text = re.sub(r"\s+", "", text).strip("()[]{}").rstrip(",").replace(",", "x")
  return re.sub(r"[^\w.+-]", "_", text) or "_"


def _short_keys(keys: list[str]) -> dict[str, str]:
  """Each key's last part, or the whole key where two varied keys share a last part."""
  last = [k.rsplit(".", 1)[-1] for k in keys]
  return {k: (short if last.count(short) == 1 else k) for k, short in zip(keys, last)}


def make(grid: list[str], samples: list[str], random: int = 0, seed: int = 0) -> list[Run]:
  """The runs of a sweep, in order: the grid's points, each with `random` draws of the samples."""
  axes = [parse_grid(spec) for spec in grid]
  drawn = [parse_sample(spec) for spec in samples]
  keys = [k for k, _ in axes] + [k for k, _ in drawn]
  repeated = sorted({k for k in keys if keys.count(k) > 1})
  if repeated:
    raise ConfigError(f"{', '.join(repeated)} is swept twice; give each key one --grid or --sample.")
  if not keys:
    raise ConfigError("Nothing to sweep: give --grid KEY=V1,V2 and/or --random N with --sample KEY=DIST.")
  if drawn and random < 1:
    raise ConfigError("--sample needs --random N (how many draws), e.g. --random 8.")
  if random and not drawn:
    raise ConfigError("--random N needs at least one --sample KEY=DIST, e.g. --sample "
                      "'optimizer.learning_rate=loguniform(1e-4,1e-2)'.")
  rng = np.random.default_rng(seed)
  draws = [[dist.draw(rng) for _, dist in drawn] for _ in range(max(random, 1))] if drawn else [[]]
  points = [list(point) + draw for point in itertools.product(*(values for _, values in axes)) for draw in draws]
  short = _short_keys(keys)
  width = max(2, len(str(len(points) - 1)))
  return [Run(f"{i:0{width}d}-" + ",".join(f"{short[k]}={_name_part(v)}" for k, v in zip(keys, point)),
              tuple(f"{config_lib.OVERRIDE_PREFIX}{k}={_value_text(v)}" for k, v in zip(keys, point)))
          for i, point in enumerate(points)]


def check(config_spec: str, fixed: list[str], runs: list[Run]) -> None:
  """Applies each run's overrides to the config and validates it: a bad key or value fails before any run."""
  configs = [config_lib.apply_overrides(config_lib.load(config_spec), [*fixed, *run.overrides]) for run in runs]
  from research import validate  # imports JAX: after the quick checks of keys and types

  for run, config in zip(runs, configs):
    try:
      validate.check(config)
    except ConfigError as e:
      raise ConfigError(f"run {run.name}: {e}") from None
