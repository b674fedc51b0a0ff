"""Errors that speak to the user: what was wrong, what was expected, what to do."""

import json
import os
import re
from pathlib import Path


def brief(error: BaseException, limit: int = 300) -> str:
  """`Type: first line of the message`, its middle cut to fit `limit` (library errors can be pages long)."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  os_error = re.search(r"os_error_code='(\d+)'", str(error))  # TensorStore buries the OS error's code
  if os_error:
    text = f"{os.strerror(int(os_error.group(1)))}: {text}"
  if len(text) > limit:
    text = f"{text[:limit // 2]} ... {text[-limit // 2:]}"
  return f"{error.__class__.__name__}: {text}"


class ConfigError(ValueError):
  """A bad config, override or name. Scripts print it as one line and exit 2."""


class DataUnavailableError(RuntimeError):
  """No source of a dataset could be reached; the message lists every source tried."""


class CheckpointError(RuntimeError):
  """No checkpoint could be read, or one could not be written; names the path and the reason."""


class WorkdirWriteError(RuntimeError):
  """A file of the workdir (metrics, TensorBoard events, config) could not be written; names the path and step."""


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. a non-finite loss under nan_policy='stop'); names the step and the metric."""


def read_json_object(path: str | os.PathLike, what: str, question: str) -> dict:
  """A JSON object read from `path`, or a one-line ConfigError: missing, unreadable, or not an object (`what`, e.g.
  "a config"), each ending with `question` (e.g. "is DIR the workdir of a training run?")."""
  path = Path(path)
  if not path.exists():
    raise ConfigError(f"{path} does not exist: {question}")
  try:
    value = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path} cannot be read ({brief(e)}): {question}") from None
  if not isinstance(value, dict):
    raise ConfigError(f"{path} holds a JSON {type(value).__name__}, not {what}: {question}")
  return value


class InputError(ValueError):
  """Inputs to a served model that do not fit its signature (shape, dtype, range, text length); the message names
  the input and the rule. A script exits 2 on it; the server answers 400."""


def exit_code(error: BaseException | None) -> int:
  """The exit code of a script whose command ended with `error`: 0 done, 2 bad input (the user's to fix), 130
  interrupted, 1 a failed run (scripts/train.py records it in run.json too)."""
  if error is None:
    return 0
  if isinstance(error, KeyboardInterrupt):
    return 130
  return 2 if isinstance(error, (ConfigError, DataUnavailableError)) else 1
