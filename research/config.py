"""Experiment configs: load `configs/<name>.py[:arg]`, apply CLI overrides, validate, save.

A config file defines `get_config(arg=None) -> ml_collections.ConfigDict`.
Overrides look like `--config.optimizer.learning_rate=0.01`. An unknown key or
a value of the wrong type raises `ConfigError` before any work starts, naming
the nearest valid key or the expected type.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
import time
import traceback
from pathlib import Path
from typing import Any, Iterable

import ml_collections

from research import atomic
from research.errors import ConfigError, brief

OVERRIDE_PREFIX = "--config."
CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


def defaults() -> ml_collections.ConfigDict:
  """Every field the loop reads, with its default. A config file starts from this and sets
  what its experiment needs (at least data.name, data.preprocess and model)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = dict(
      name="",
      input_key="image",
      label_key="label",  # the split's column of class labels (classifiers)
      clean="",  # whole-split cleaners at load time, research/data/clean.py
      preprocess="",  # host ops per batch, research/data/ops.py, e.g. "normalize(0.5, 0.5)|flatten"
      augment="",  # on-device train-time ops, research/data/augment.py, e.g. "random_crop(pad=2)|flip_lr"
      batch_size=128,
      eval_batch_size=1000,
      shuffle=True,
  )
  config.model = dict(name="")
  config.label_smoothing = 0.0
  config.optimizer = dict(name="adam", learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                          clip_norm=0.0, momentum=0.9, decay=0.9)  # decay: rmsprop's
  config.schedule = dict(name="warmup_cosine", warmup_steps=200, end_factor=0.0, boundaries=(), factor=0.1)
  # steps > 0 overrides epochs. stop_after_steps > 0 ends this invocation early with a checkpoint
  # (for jobs with a time limit); rerunning continues the same run.
  # early_stopping_patience > 0 stops after that many evals without improving checkpoint.best_metric.
  # profile_steps > 0 traces that many steps, after profile_skip more, for TensorBoard (train/profiling.py).
  # grad_accum_steps > 1 runs each step's batch as that many microbatches, one at a time (less memory, the same
  # update: research/train/accumulation.py); it must divide the per-device batch.
  config.train = dict(epochs=10, steps=0, log_every=100, eval_every=1000, stop_after_steps=0,
                      early_stopping_patience=0, profile_steps=0, profile_skip=5, grad_accum_steps=1)
  # Keep the last `keep` checkpoints, plus the `keep_best` best by eval `best_metric` ("" = off): the best is
  # what `--step best` of evaluate/export picks. The zoo's classifiers rank by accuracy.
  config.checkpoint = dict(every=1000, keep=3, best_metric="", best_mode="max", keep_best=1)
  # Global magnitude pruning (research/prune.py); sparsity 0 = off.
  config.prune = dict(sparsity=0.0, schedule="one_shot", start_step=0, end_step=0, every=100)
  # What the run logs beyond the train and eval scalars (research/train/hooks_tensorboard.py, docs/tensorboard.md);
  # a period of 0 or False turns one off. extra: more hooks by registered name, "name" or "name:EVERY".
  config.hooks = dict(histograms_every=1000, layer_norms_every=500, input_grid_every=1000, confusion_matrix=True,
                      model_summaries=True, schedule_points=100, extra=())
  config.nan_policy = "stop"  # or "skip": a step with a non-finite loss/gradient is never applied.
  config.compilation_cache = ""  # "" = WORKDIR/cache/jax; a directory to share between runs; or "off".
  config.fast_paths = True  # faster max-pool, BatchNorm and attention (research/models/layers/fast_paths.py)
  # Activations the Transformer and GPT blocks keep for the backward pass: "none" (all), "full" (none: each block is
  # recomputed) or "dots" (the weight matmuls' outputs); research/models/layers/remat.py.
  config.remat = "none"
  config.compute_dtype = "float32"  # or "bfloat16": mixed precision, float32 parameters (research/models/precision.py)
  # XLA:CPU flags of scripts/train.py's process: "default", "fused_reductions" (LayerNorm models train faster)
  # or "off" (research/xla_flags.py).
  config.xla_profile = "default"
  config.init_from = ""  # "WORKDIR[:STEP]": start from another run's parameters (fresh optimizer).
  config.parallel = dict(strategy="auto")  # or "pmap": per-device code under shard_map
  # Devices on each mesh axis, one of them -1 = the rest (research/parallel.py); rules: (regex, spec) pairs that
  # place parameters, tried before the model family's defaults (research/sharding.py).
  config.mesh = dict(data=-1, fsdp=1, tensor=1, rules=())
  return config


def smoke(config: ml_collections.ConfigDict, steps: int = 20) -> ml_collections.ConfigDict:
  """Turns a config into its tiny `:smoke` variant: a few steps, logs, evals and checkpoints."""
  config.train.update(dict(epochs=0, steps=steps, log_every=5, eval_every=steps // 2))
  config.checkpoint.every = steps // 2
  return config


def available() -> list[str]:
  """The experiment configs shipped in configs/ (paths relative to the repository root)."""
  return sorted(f"configs/{p.name}" for p in CONFIGS_DIR.glob("*.py") if not p.name.startswith("_"))


def _missing_file(path: str) -> ConfigError:
  name = Path(path).stem
  known = available()
  near = [c for c in known if Path(c).stem == name] or difflib.get_close_matches(f"configs/{name}.py", known, n=1)
  hint = f" Did you mean {near[0]}?" if near else ""
  return ConfigError(f"Config file {path!r} does not exist.{hint} Pass --config configs/<name>.py[:variant]; "
                     f"configs: {', '.join(Path(c).stem for c in known)}.")


def _where(path: str, error: BaseException) -> str:
  """`PATH line N`: the line of the config file that raised `error` (or called what raised it)."""
  lines = [f.lineno for f in traceback.extract_tb(error.__traceback__)
           if os.path.abspath(f.filename) == os.path.abspath(path)]
  return f"{path} line {lines[-1]}" if lines else path


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py` or `path/to/config.py:arg` and returns its ConfigDict.

  Every failure (no such file, a file that does not run, an unknown variant) is a one-line ConfigError."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise _missing_file(path)
  module_spec = importlib.util.spec_from_file_location(f"_config_{Path(path).stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"{e.filename or path} line {e.lineno}: syntax error ({e.msg}); fix the file.") from None
  except Exception as e:  # a config that raises while loading: its own error, in one line
    raise ConfigError(f"{_where(path, e)}: failed to load: {brief(e)}; fix the config file.") from None
  if not hasattr(module, "get_config"):
    raise ConfigError(f"{path} defines no get_config(arg=None) function.")
  try:
    config = module.get_config(arg or None)
  except Exception as e:  # e.g. an unknown variant: the config's message names the known ones
    detail = " ".join(str(e).split()) if isinstance(e, ValueError) else brief(e)
    raise ConfigError(f"--config {spec}: {detail} ({_where(path, e)})") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict, got {type(config).__name__}.")
  return config


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
  """A config read back from a workdir's config.json, completed with defaults() for keys added since it was
  written, so code can read every default key without guards. `model` is the saved one as is."""
  merged = to_dict(defaults())

  def merge(into: dict, values: dict) -> None:
    for key, value in values.items():
      if isinstance(value, dict) and isinstance(into.get(key), dict) and key != "model":
        merge(into[key], value)
      else:
        into[key] = value

  merge(merged, saved)
  return ml_collections.ConfigDict(merged)


def leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """All dotted keys of leaves, e.g. ['data.batch_size', 'optimizer.name', ...]."""
  keys = []
  for name, value in config.items():
    key = f"{prefix}{name}"
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(leaf_keys(value, key + "."))
    else:
      keys.append(key)
  return keys


def _nearest(key: str, candidates: Iterable[str]) -> str:
  candidates = list(candidates)
  near = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
  if not near:  # Compare the last component too: 'lerning_rate' vs 'learning_rate'.
    last = {c.rsplit(".", 1)[-1]: c for c in candidates if c.startswith(key.rpartition(".")[0])}
    near = [last[m] for m in difflib.get_close_matches(key.rsplit(".", 1)[-1], list(last), n=1)]
  return f" Did you mean {near[0]!r}?" if near else ""


def parse_value(text: str, current: Any, key: str) -> Any:
  """Parses an override string into the type of the field's current value."""

  def wrong(expected: str) -> ConfigError:
    return ConfigError(f"Config key {key!r} expects {expected}, got {text!r}. Example: --config.{key}={current!r}")

  if isinstance(current, bool):
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
      return True
    if lowered in ("false", "0", "no"):
      return False
    raise wrong("a bool (true/false)")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise wrong("an int") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise wrong("a float") from None
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:
      return text  # An unset optional field: a bare word is a string.
    raise wrong(f"a Python literal of type {type(current).__name__}") from None
  if isinstance(current, (tuple, list)):
    if not isinstance(value, (tuple, list)):
      raise wrong("a list, e.g. (1,2)")
    return type(current)(value)
  return value


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
  """Applies `--config.a.b=value` strings in order; raises ConfigError on any bad one."""
  for override in overrides:
    if not override.startswith(OVERRIDE_PREFIX) or "=" not in override:
      raise ConfigError(f"Cannot read override {override!r}: write it as --config.some.key=value.")
    key, _, text = override[len(OVERRIDE_PREFIX):].partition("=")
    parent, _, name = key.rpartition(".")
    node = config
    for part in parent.split(".") if parent else []:
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or name not in node:
      raise ConfigError(f"Unknown config key {key!r}.{_nearest(key, leaf_keys(config))}")
    current = node[name]
    if isinstance(current, ml_collections.ConfigDict):
      raise ConfigError(f"Config key {key!r} is a group; set one of its fields, e.g. --config.{leaf_keys(current, key + '.')[0]}=...")
    value = parse_value(text, current, key)
    try:
      node[name] = value
    except TypeError as e:  # ConfigDict's own type safety, for types parse_value lets through.
      raise ConfigError(f"Config key {key!r}: {e}") from None
  return config


def to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json())


HISTORY_FILE = "config_history.jsonl"


def changes(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, list]:
  """{key: [old, new]} for every key that differs from WORKDIR/config.json; {} if there is none yet. A key added to
  the defaults since that file was written counts as its default there (as `with_defaults` reads it back), so
  resuming a run written by an older version reports only what the config really changes."""
  path = Path(workdir) / "config.json"
  if not path.exists():
    return {}
  try:
    old = _flat(to_dict(with_defaults(json.loads(path.read_text()))))
  except (OSError, ValueError, TypeError, AttributeError):
    return {"<unreadable config.json>": [None, None]}
  new = _flat(to_dict(config))
  return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def save(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> None:
  """Writes WORKDIR/config.json (atomically: a reader never sees half of it)."""
  atomic.write_text(Path(workdir) / "config.json", json.dumps(to_dict(config), indent=2, sort_keys=True) + "\n")


def record_changes(workdir: str | os.PathLike, step: int, changed: dict[str, list]) -> None:
  """Appends a resume's accepted config changes to WORKDIR/config_history.jsonl."""
  with open(Path(workdir) / HISTORY_FILE, "a") as f:
    f.write(json.dumps({"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changes": changed}) + "\n")


def history(workdir: str | os.PathLike) -> list[dict]:
  """The config changes accepted on earlier resumes, oldest first."""
  try:
    lines = (Path(workdir) / HISTORY_FILE).read_text().splitlines()
  except OSError:
    return []
  return [json.loads(line) for line in lines if line.strip().endswith("}")]


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
