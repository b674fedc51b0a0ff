"""A language model's generation, exported: prefill and one cached decode step, as StableHLO.

    generate/prefill.jax_exported   prefill(weights, tokens int32[B, block_size]) -> (logits, k, v)
    generate/decode.jax_exported    decode(weights, k, v, token int32[B], index int32[B]) -> (logits, k, v)
    generate/weights.npz            the weights as a flat list, "w0000", ... in call order

The host loop that drives them (sampling, the sliding window past block_size) is the library's own,
research.models.gpt.sliding_generate, so an export generates exactly the tokens the trained model does for
the same seed. Text is UTF-8 bytes, one token per byte (the Shakespeare GPT's vocabulary of 256).
Any batch size B, and each row at its own position (`index[b]`): concurrent streams that started at different
times share one decode step (research/serve/streams.py).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from research.errors import ConfigError
from research.export.stablehlo import PLATFORMS, load_weights

DIR = "generate"
TOKENIZER = {"kind": "bytes", "encoding": "utf-8", "vocab_size": 256}


def supported(model) -> bool:
  from research.models.gpt import GPT

  return isinstance(model, GPT)


def export(model, out: Path, *, platforms: tuple[str, ...] = PLATFORMS) -> dict:
  from research.models.gpt import decoder

  prefill, decode, weights = decoder(model)
  attn = model.blocks[0].attn
  batch, = jax.export.symbolic_shape("b")
  block = model.block_size
  w = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in weights]
  cache = jax.ShapeDtypeStruct((len(model.blocks), batch, block, attn.num_heads, attn.head_dim), jnp.float32)
  folder = out / DIR
  folder.mkdir(parents=True, exist_ok=True)
  for name, fn, args in [
      ("prefill", prefill, (w, jax.ShapeDtypeStruct((batch, block), jnp.int32))),
      ("decode", decode, (w, cache, cache, jax.ShapeDtypeStruct((batch,), jnp.int32),
                          jax.ShapeDtypeStruct((batch,), jnp.int32)))]:
    exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(*args)
    (folder / f"{name}.jax_exported").write_bytes(exported.serialize())
  np.savez(folder / "weights.npz", **{f"w{i:04d}": x for i, x in enumerate(weights)})
  return {"files": [f"{DIR}/prefill.jax_exported", f"{DIR}/decode.jax_exported", f"{DIR}/weights.npz"],
          "prefill": f"{DIR}/prefill.jax_exported", "decode": f"{DIR}/decode.jax_exported",
          "weights": f"{DIR}/weights.npz", "block_size": block, "vocab_size": model.vocab_size,
          "slide_to": block // 2, "tokenizer": TOKENIZER, "platforms": list(platforms),
          "signature": "prefill(weights, tokens int32[B, block_size]) -> (logits, k, v); "
                       "decode(weights, k, v, token int32[B], index int32[B]) -> (logits, k, v)"}


def load(out: Path, section: dict):
  """(prefill(tokens), decode(k, v, token, index)) of an export, weights bound, as jitted JAX functions."""
  weights = jax.device_put(load_weights(out / section["weights"]))
  prefill, decode = (jax.export.deserialize(bytearray((out / section[name]).read_bytes())) for name in
                     ("prefill", "decode"))
  if decode.in_avals[-1].shape == ():
    raise ConfigError(f"{out} was exported when decode took one position for the whole batch; export it again "
                      f"(scripts/export.py) for a decode step with a position per row.")
  prefill, decode = jax.jit(prefill.call), jax.jit(decode.call)
  return (lambda tokens: prefill(weights, tokens)), (lambda k, v, token, index: decode(weights, k, v, token, index))


def check(model, out: Path, section: dict, tokens: int = 12) -> dict:
  """Greedy generation from the export equals the trained model's, past one window (a slide included)."""
  from research.models.gpt import generate, sliding_generate

  prompt = (np.arange(min(8, model.block_size - 1), dtype=np.int32)[None] * 7 + 65) % model.vocab_size
  n = max(tokens, model.block_size + 2 - prompt.shape[1])  # fills the window once, then slides
  want = generate(model, prompt, n, rng=jax.random.key(0), temperature=0.0)
  prefill, decode = load(out, section)
  got = sliding_generate(prefill, decode, prompt, n, block_size=section["block_size"], rng=jax.random.key(0),
                         temperature=0.0)
  agree = float(np.mean(got == want))
  if agree < 1.0:
    raise ValueError(f"the exported generation differs from the trained model's ({agree:.0%} of tokens agree)")
  return {"greedy_tokens_checked": int(n), "agreement": agree}
