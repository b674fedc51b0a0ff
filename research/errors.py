"""Errors that speak to the user: what was wrong, what was expected, what to do."""


class ConfigError(ValueError):
  """A bad config, override or name. Scripts print it as one line and exit 2."""


class DataUnavailableError(RuntimeError):
  """No source of a dataset could be reached; the message lists every source tried."""


class CheckpointError(RuntimeError):
  """No checkpoint could be read, or one could not be written; names the path and the reason."""


class TrainingError(RuntimeError):
  """Training cannot go on (e.g. a non-finite loss under nan_policy='stop'); names the step and the metric."""
