"""StableHLO through `jax.export`: a serialized function of (weights, *inputs), the weights beside it.

    stablehlo/model.jax_exported   jax.export serialization (StableHLO + calling convention), dynamic batch
    stablehlo/model.mlir           the same StableHLO module as text, for XLA tools that read MLIR
    stablehlo/weights.npz          the weights as a flat list: arrays "w0000", "w0001", ... in call order

Load it with

    exported = jax.export.deserialize(bytearray(open("stablehlo/model.jax_exported", "rb").read()))
    weights = [w for _, w in sorted(np.load("stablehlo/weights.npz").items())]
    logits, = exported.call(weights, images)

Weights are an argument rather than constants in the module so that the
serialized function stays small and can be fed other weights of the same shapes.
They are a flat list because NNX states keyed by integers do not serialize.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from research.export.model import Exportable

DIR = "stablehlo"
PLATFORMS = ("cpu", "cuda")


def export(ex: Exportable, out: Path, *, platforms: tuple[str, ...] = PLATFORMS) -> dict:
  exported = jax.export.export(jax.jit(ex.apply), platforms=tuple(platforms))(ex.weight_structs(), *ex.input_structs())
  folder = out / DIR
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "model.jax_exported").write_bytes(exported.serialize())
  (folder / "model.mlir").write_text(exported.mlir_module())
  np.savez(folder / "weights.npz", **{f"w{i:04d}": w for i, w in enumerate(ex.weights)})
  return {"files": [f"{DIR}/model.jax_exported", f"{DIR}/model.mlir", f"{DIR}/weights.npz"],
          "path": f"{DIR}/model.jax_exported", "weights": f"{DIR}/weights.npz", "platforms": list(exported.platforms),
          "calling_convention_version": exported.calling_convention_version, "dynamic_batch": True,
          "signature": "call(weights: list[array], *inputs) -> tuple of outputs",
          "runtime": "jax.export.deserialize(...).call"}


def load_weights(path: Path) -> list[np.ndarray]:
  with np.load(path) as f:
    return [f[k] for k in sorted(f.files)]


def load(out: Path, artifact: dict):
  exported = jax.export.deserialize(bytearray((out / artifact["path"]).read_bytes()))
  weights = jax.device_put(load_weights(out / artifact["weights"]))
  call = jax.jit(exported.call)
  return lambda *inputs: [np.asarray(y) for y in call(weights, *inputs)]
