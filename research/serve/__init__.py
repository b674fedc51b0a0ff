"""Serving: predictions from an export directory alone (no workdir, no dataset, no network).

    from research.serve import Predictor
    model = Predictor.load("runs/mnist_mlp/export")      # sha256 of every file checked first
    model.predict({"image": pixels_uint8})                # -> predictions, probabilities, label names

`Generator` (research/serve/generate.py) continues a prompt with an exported
language model. `Predictor` (research/serve/predictor.py) applies the manifest's preprocessing
with the same code as training and runs the model in onnxruntime (default) or,
from the StableHLO export, in JAX. `research/serve/inputs.py` reads raw inputs
(image files, `.npy`, lines of text) and checks them against the signature.
"""

from research.serve.predictor import Predictor

__all__ = ["Predictor"]
