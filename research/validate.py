"""A config's values checked against their meaning before any work: names, sizes, probabilities, counts.

research/config.py checks each value's type as it is set; this module checks what the value means, so a
value the run cannot use stops it at once with one line naming the key, the value, the rule and the fix
(`checkpoint.keep=0: keep at least 1 checkpoint (set checkpoint.keep >= 1).`), instead of a traceback from
deep inside JAX, or a run that silently does something else. `config.model` differs per model family, so its
keys are checked by their names (`*dropout*` is a probability, `num_*` and `*_size` are sizes, ...): a new
model gets the same checks without code here.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Callable, Iterator, NamedTuple

import ml_collections

from research import data, models, optim, prune  # noqa: F401  (data, models, optim: fill the registries)
from research.errors import ConfigError
from research.models.layers import remat
from research.registry import ACTIVATIONS, DATASETS, MODELS, OPTIMIZERS, SCHEDULES, Registry
from research.train import hooks, hooks_tensorboard  # noqa: F401  (hooks_tensorboard: fills the HOOKS registry)

MAX_STEPS = 2**31 - 1  # TrainState.step is an int32


class Rule(NamedTuple):
  ok: Callable[[Any], bool]  # of one value, or of each entry of a tuple
  meaning: str  # the rule, in words
  fix: str  # what to set, with {key}


def _whole(low: int, high: float = math.inf) -> Callable[[Any], bool]:
  return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _number(ok: Callable[[float], bool]) -> Callable[[Any], bool]:
  return lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and ok(v)


SIZE = Rule(_whole(1), "sizes and numbers of classes, layers or heads are whole numbers >= 1", "{key} >= 1")
STEPS = Rule(_whole(0, MAX_STEPS), f"step counts and periods are whole numbers from 0 (off) to {MAX_STEPS}",
             f"0 <= {{key}} <= {MAX_STEPS}")
COUNT = Rule(_whole(0), "a count is a whole number >= 0", "{key} >= 0")
PROBABILITY = Rule(_number(lambda v: 0 <= v < 1), "a probability or decay rate is a number in [0, 1)",
                   "0 <= {key} < 1")
POSITIVE = Rule(_number(lambda v: v > 0), "must be a finite number > 0", "{key} > 0")
NONNEGATIVE = Rule(_number(lambda v: v >= 0), "must be a finite number >= 0", "{key} >= 0")
KEEP = Rule(_whole(1), "keep at least 1 checkpoint", "{key} >= 1")
SEED = Rule(_whole(0, 2**32 - 1), "a seed is a whole number from 0 to 2**32 - 1", "0 <= {key} < 2**32")
DEVICES = Rule(lambda v: v == -1 or _whole(1)(v),
               "a mesh axis takes -1 (the devices the other axes leave) or a number of devices", "{key} = -1")

# Dotted keys (fnmatch patterns) -> a Rule, or the Registry that knows the names. The first match wins;
# other keys are free, but no float anywhere may be nan or infinite.
RULES: list[tuple[str, Rule | Registry]] = [
    ("data.name", DATASETS), ("model.name", MODELS), ("optimizer.name", OPTIMIZERS), ("schedule.name", SCHEDULES),
    ("seed", SEED), ("data.batch_size", SIZE), ("data.eval_batch_size", SIZE), ("label_smoothing", PROBABILITY),
    ("optimizer.learning_rate", POSITIVE), ("optimizer.b1", PROBABILITY), ("optimizer.b2", PROBABILITY),
    ("optimizer.momentum", PROBABILITY), ("optimizer.decay", PROBABILITY), ("optimizer.eps", NONNEGATIVE),
    ("optimizer.weight_decay", NONNEGATIVE), ("optimizer.clip_norm", NONNEGATIVE),
    ("schedule.warmup_steps", STEPS), ("schedule.boundaries", NONNEGATIVE),  # steps, or fractions of the run
    ("schedule.end_factor", NONNEGATIVE), ("schedule.factor", NONNEGATIVE),
    ("train.grad_accum_steps", SIZE), ("train.*", STEPS),
    ("checkpoint.every", STEPS), ("checkpoint.keep", KEEP), ("checkpoint.keep_best", COUNT),
    ("prune.*_step", STEPS), ("prune.every", STEPS), ("mesh.data", DEVICES), ("mesh.fsdp", DEVICES),
    ("mesh.tensor", DEVICES),
    ("hooks.*_every", STEPS), ("hooks.schedule_points", COUNT),
    # config.model, by the names its keys share across families
    ("model.*activation", ACTIVATIONS),
    ("model.*dropout*", PROBABILITY), ("model.*_rate", PROBABILITY), ("model.*momentum*", PROBABILITY),
    ("model.num_*", SIZE), ("model.*size", SIZE), ("model.*sizes", SIZE), ("model.dim", SIZE), ("model.*_dim", SIZE),
    ("model.*layers", SIZE), ("model.*heads", SIZE), ("model.*channels", SIZE), ("model.depth", SIZE),
    ("model.width", SIZE), ("model.*_ratio", SIZE),
    ("model.*_length", COUNT), ("model.*_tokens", COUNT), ("model.*_id", COUNT), ("model.*top_k", COUNT),
    ("model.*temperature", NONNEGATIVE),  # 0: greedy
]


def leaves(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[tuple[str, Any]]:
  """(dotted key, value) of every leaf."""
  for name, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      yield from leaves(value, f"{prefix}{name}.")
    else:
      yield f"{prefix}{name}", value


def _check(key: str, value: Any, rule: Rule | Registry) -> None:
  if isinstance(rule, Registry):
    if not isinstance(value, str) or value not in rule:
      raise ConfigError(rule.unknown_message(value, key))
    return
  entries = value if isinstance(value, (tuple, list)) else [value]  # e.g. model.hidden_sizes: each one
  if not all(rule.ok(v) for v in entries):
    raise ConfigError(f"{key}={value!r}: {rule.meaning} (set {rule.fix.format(key=key)}).")


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first value the run cannot use; reads no data."""
  for key, value in leaves(config):
    rule = next((r for pattern, r in RULES if fnmatch.fnmatchcase(key, pattern)), None)
    if rule is not None:
      _check(key, value, rule)
    elif isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"{key}={value!r}: must be a finite number (set {key} to one).")
  if config.train.steps == 0 and config.train.epochs == 0:
    raise ConfigError("train.steps=0 and train.epochs=0: the run has nothing to do (set either one > 0).")
  prune.check(config.prune)
  remat.check(config.remat)
  for spec in config.hooks.extra:
    hooks.parse_extra(spec)


def against_data(config: ml_collections.ConfigDict, sizes: dict[str, int]) -> None:
  """The values that depend on the data, once the splits are loaded: `sizes` maps a split to its examples."""
  n, batch = sizes["train"], config.data.batch_size
  if batch > n:  # the eval pipeline pads a last partial batch, so only the train batch must fit its split
    raise ConfigError(f"data.batch_size={batch}: a batch cannot hold more than the {n} examples of the train "
                      f"split (set data.batch_size <= {n}).")
  epochs, steps_per_epoch = config.train.epochs, n // batch
  if config.train.steps == 0 and epochs * steps_per_epoch > MAX_STEPS:
    raise ConfigError(f"train.epochs={epochs}: {epochs} epochs of {steps_per_epoch} steps exceed the "
                      f"{MAX_STEPS} steps a run can count (set train.epochs <= {MAX_STEPS // steps_per_epoch}).")
