"""Errors that speak to the user: what was wrong, what was expected, what to do."""

import os
import re


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


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. a non-finite loss under nan_policy='stop'); names the step and the metric."""
