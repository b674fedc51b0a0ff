"""Text generation from an export directory alone: the exported prefill and decode steps, the library's loop.

    gen = Generator.load("runs/shakespeare_gpt/export")
    text = gen.generate("ROMEO:", max_tokens=200, temperature=0.8, top_k=40, seed=0)

The export's files are verified against its manifest first. Sampling, seeding and the sliding window past
block_size are research.models.gpt.sliding_generate, so a seed gives the same text as the trained model
(`generate` in research/models/gpt.py) and as every other run of this command. `on_text` receives the text
as it is generated (for streaming); bytes of a character split across tokens are held until it is whole.
A server shares one decode step among its concurrent requests (research/serve/streams.py).
"""

from __future__ import annotations

import codecs
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from research.errors import ConfigError, InputError
from research.serve.inputs import MAX_TEXT_CHARS

if TYPE_CHECKING:
  from research.serve.streams import Scheduler

MAX_TOKENS = 100_000


@dataclasses.dataclass(eq=False)
class Generator:
  directory: Path
  manifest: dict
  prefill: Callable
  decode: Callable  # decode(k, v, token int32[B], index int32[B]): each row at its own position
  scheduler: Scheduler | None = None  # a server's concurrent streams over this export (made on first use)

  @classmethod
  def load(cls, directory: str | Path) -> "Generator":
    from research.export import manifest as manifest_lib

    directory = Path(directory)
    return cls.from_verified(directory, manifest_lib.verify(directory))

  @classmethod
  def from_verified(cls, directory: Path, manifest: dict) -> "Generator":
    """`load` of an export whose files were already checked against `manifest`."""
    from research.export import generation

    section = manifest.get("generation")
    if section is None:
      raise ConfigError(f"{directory} holds a {manifest['model']['name']} export, which does not generate text; "
                        f"export a language model (e.g. configs/shakespeare_gpt.py).")
    prefill, decode = generation.load(directory, section)
    return cls(directory, manifest, prefill, decode)

  @property
  def block_size(self) -> int:
    return int(self.manifest["generation"]["block_size"])

  def generate(self, prompt: str, max_tokens: int, *, temperature: float = 1.0, top_k: int = 0, seed: int = 0,
               on_text: Callable[[str], None] | None = None) -> str:
    """The continuation of `prompt` (not including it): `max_tokens` tokens (bytes), decoded as UTF-8."""
    import jax

    from research.models.gpt import sliding_generate

    check_request(prompt, max_tokens, temperature, top_k, seed)
    ids = encode(prompt)[None]
    decoder = text_decoder()
    stream = (lambda token: on_text(decoder.decode(bytes([int(token[0])])))) if on_text else None
    tokens = sliding_generate(self.prefill, self.decode, ids, max_tokens, block_size=self.block_size,
                              rng=jax.random.key(seed), temperature=temperature, top_k=top_k, on_tokens=stream)
    if on_text:
      on_text(decoder.decode(b"", final=True))
    return bytes(tokens[0, ids.shape[1]:].astype(np.uint8).tolist()).decode("utf-8", errors="replace")


def encode(prompt: str) -> np.ndarray:
  """The prompt's tokens: its UTF-8 bytes as int32[P]."""
  return np.frombuffer(prompt.encode("utf-8"), np.uint8).astype(np.int32)


def text_decoder() -> codecs.IncrementalDecoder:
  """Bytes (tokens) in, text out as soon as each character is whole; bad bytes become U+FFFD."""
  return codecs.getincrementaldecoder("utf-8")(errors="replace")


def check_request(prompt: str, max_tokens: int, temperature: float, top_k: int, seed: int) -> None:
  """One InputError naming the first value that cannot be generated with (JSON's true/false are not numbers)."""
  whole = lambda x: isinstance(x, int) and not isinstance(x, bool)
  if not isinstance(prompt, str) or not prompt:
    raise InputError("prompt must be a non-empty string.")
  if len(prompt) > MAX_TEXT_CHARS:
    raise InputError(f"prompt has {len(prompt)} characters; at most {MAX_TEXT_CHARS} are accepted.")
  try:
    prompt.encode("utf-8")
  except UnicodeEncodeError as e:  # a lone surrogate, e.g. JSON's "\ud800"
    raise InputError(f"prompt is not valid text: character {e.start} is a lone surrogate.") from None
  if not whole(max_tokens) or not 1 <= max_tokens <= MAX_TOKENS:
    raise InputError(f"max_tokens must be a whole number from 1 to {MAX_TOKENS}, got {short_repr(max_tokens)}.")
  if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 100:
    raise InputError(f"temperature must be a number from 0 (greedy) to 100, got {short_repr(temperature)}.")
  if not whole(top_k) or not 0 <= top_k < 2**31:  # (int32 in the compiled draw; past the vocabulary it cuts none)
    raise InputError(f"top_k must be a whole number from 0 (no cut) to 2**31 - 1, got {short_repr(top_k)}.")
  if not whole(seed) or not 0 <= seed < 2**32:
    raise InputError(f"seed must be a whole number from 0 to 2**32 - 1, got {short_repr(seed)}.")


def short_repr(value) -> str:
  """A value as an error message quotes it: short (a request may send anything)."""
  text = repr(value)
  return text if len(text) <= 40 else text[:37] + "..."
