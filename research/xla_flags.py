"""XLA flags the library sets by default, before JAX starts its backend.

On XLA:CPU, jaxlib 0.10 hands work to YNNPACK in two ways that made the
library's models slower (measurements: docs/performance.md):
  - convolutions: YNNPACK's kernel gradient (the backward pass with respect to
    the filter) ran 7-9x slower than XLA's own (Eigen) convolution for the
    small-channel 3x3 layers of the zoo's CNN and ResNet (135 ms vs 19 ms for a
    128x28x28x16 -> 16 layer); forward and input gradients took the same time;
  - reductions: a YNNPACK "reduce" fusion swallows a LayerNorm's reductions
    with the matmuls and GELUs around them into one graph. For inference that
    ran 2x slower than XLA's separate kernels (the benchmark Transformer's
    forward pass: 120-140 ms vs 62-65 ms), but a Transformer's training step ran
    1.13x faster with it (190 -> 214 examples/s) and the MLP/CNN did not change.
So there are profiles: `default` keeps both with XLA; `fused_reductions`
keeps convolutions with XLA and lets YNNPACK fuse reductions (the zoo's
Transformer and GPT configs train with it; the VAE's training step ran 0.89x
with it); `off` sets nothing. Matmuls go to YNNPACK either way. The flags only
concern the CPU backend.

Importing the library sets nothing. The scripts call `apply()` first, which
applies the profile named by RESEARCH_XLA_DEFAULTS (unset: `default`);
scripts/train.py then applies its config's `xla_profile` before JAX starts,
and `research.train.loop.train` does too (`use`) if JAX has not started yet,
unless XLA_FLAGS already sets the same flag (your value wins). The flags take
effect only if JAX has not yet started its backend in this process; after
that, `use` returns a warning instead. Your own program calls `apply()` before
it imports jax to get the same flags.
Child processes inherit XLA_FLAGS, so the flags the library added are also
named in RESEARCH_XLA_ADDED: a child that imports research replaces them with
its own profile's instead of taking them for yours.
"""

from __future__ import annotations

import os
from typing import MutableMapping

YNN_FUSIONS = "--xla_cpu_experimental_ynn_fusion_type"
PROFILES = {
    "default": {YNN_FUSIONS: "-individual_convolution,-reduce"},
    "fused_reductions": {YNN_FUSIONS: "-individual_convolution"},
    "off": {},
}
ENV = "RESEARCH_XLA_DEFAULTS"
ADDED = "RESEARCH_XLA_ADDED"
ALIASES = {"1": "default", "0": "off"}  # the values this variable took before the profiles had names


def profile(environ: MutableMapping[str, str] = os.environ) -> str:
  """The profile RESEARCH_XLA_DEFAULTS names (`default` when unset)."""
  name = environ.get(ENV, "default")
  name = ALIASES.get(name, name)
  if name not in PROFILES:
    raise ValueError(f"{ENV}={environ[ENV]!r}; choose one of {', '.join(PROFILES)}.")
  return name


def apply(environ: MutableMapping[str, str] = os.environ, profile_name: str | None = None) -> None:
  """Sets XLA_FLAGS to your flags plus the profile's (by default RESEARCH_XLA_DEFAULTS's), except flags yours
  already set. Applying again replaces the flags the last call added."""
  chosen = PROFILES[profile_name or profile(environ)]
  added = environ.pop(ADDED, "").split()
  flags = [f for f in environ.get("XLA_FLAGS", "").split() if f not in added]  # yours: not added by a parent
  mine = [f"{name}={value}" for name, value in chosen.items()
          if not any(f == name or f.startswith(name + "=") for f in flags)]
  if flags or mine:
    environ["XLA_FLAGS"] = " ".join(flags + mine)
  else:
    environ.pop("XLA_FLAGS", None)
  if mine:
    environ[ADDED] = " ".join(mine)


def use(profile_name: str, environ: MutableMapping[str, str] = os.environ) -> str | None:
  """Makes `profile_name` this process's profile, as `research.train.loop.train` does for its config.

  Before JAX starts its backend this applies it; after, flags can no longer change, so if they differ from
  what the profile would set, this returns a warning that names the fix (None otherwise).
  """
  planned = dict(environ)
  apply(planned, profile_name)
  if planned.get("XLA_FLAGS") == environ.get("XLA_FLAGS"):
    return None
  from jax._src import xla_bridge  # (private: the public API cannot tell whether the backend has started)

  if not xla_bridge.backends_are_initialized():
    apply(environ, profile_name)
    return None
  return (f"warning: config.xla_profile={profile_name!r} is not in effect, since JAX started before the run "
          f"with XLA_FLAGS={environ.get('XLA_FLAGS', '')!r}. Call research.xla_flags.apply(profile_name="
          f"{profile_name!r}) before JAX starts (scripts/train.py does this for you).")


DEVICE_COUNT = "--xla_force_host_platform_device_count"


def simulate_cpu_devices(count: int, environ: MutableMapping[str, str] = os.environ) -> None:
  """Makes JAX, once it starts, run on `count` simulated CPU devices (whatever devices the machine has), as
  `scripts/train.py --compile_only` needs to compile for a mesh it does not have. Call before JAX starts."""
  flags = [f for f in environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT)]
  environ["XLA_FLAGS"] = " ".join([*flags, f"{DEVICE_COUNT}={count}"])
  environ["JAX_PLATFORMS"] = "cpu"
