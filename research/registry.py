"""Name -> factory maps: every extension point is chosen by a string in the config."""

from __future__ import annotations

import difflib
import functools
from typing import Callable, Generic, TypeVar

from research.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
  """A named map of factories, e.g. `MODELS.get("mlp")`.

  Register with the decorator `@MODELS.register("mlp")`. An unknown name is an
  error that lists the known names and suggests the nearest one. A name ending
  in ":" registers a family whose members carry an argument: after
  `@DATASETS.register("tokens:")`, `DATASETS.get("tokens:DIR")` is the entry
  with "DIR" bound as its first argument.
  """

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def add(entry: T) -> T:
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice.")
      self._entries[name] = entry
      return entry

    return add

  def get(self, name: str) -> T:
    if name in self._entries:
      return self._entries[name]
    family, argument = self._family(name)
    if family is None:
      raise ConfigError(self.unknown_message(name))
    return functools.update_wrapper(functools.partial(self._entries[family], argument), self._entries[family])

  def _family(self, name) -> tuple[str | None, str]:
    """("tokens:", "DIR") for "tokens:DIR" when the family "tokens:" is registered, else (None, "")."""
    family, sep, argument = str(name).partition(":")
    return (family + sep, argument) if sep and argument and family + sep in self._entries else (None, "")

  def unknown_message(self, name: str, key: str = "") -> str:
    """`Unknown model 'mpl'. Did you mean 'mlp'? Known: ...`; with `key`, it opens `model.name='mpl': ...`."""
    known = sorted(self._entries)
    near = difflib.get_close_matches(str(name), known, n=1)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    what = f"{key}={name!r}: unknown {self.kind}" if key else f"Unknown {self.kind} {name!r}"
    return f"{what}.{hint} Known: {', '.join(known)}."

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries or self._family(name)[0] is not None


MODELS: Registry = Registry("model")
DATASETS: Registry = Registry("dataset")
OPS: Registry = Registry("preprocessing op")
AUGMENTS: Registry = Registry("augmentation op")
CLEANERS: Registry = Registry("cleaning op")
OPTIMIZERS: Registry = Registry("optimizer")
SCHEDULES: Registry = Registry("learning-rate schedule")
LOSSES: Registry = Registry("loss")
ACTIVATIONS: Registry = Registry("activation")  # a model's `activation` (research/models/mlp.py)
HOOKS: Registry = Registry("hook")  # hooks a config adds by name: config.hooks.extra (research/train/hooks.py)
