"""Export a trained model for deployment, prove each artifact matches JAX, and describe it in manifest.json.

    from research import export
    export.export("runs/mnist_mlp", formats="onnx")   # -> runs/mnist_mlp/export/{model.onnx, manifest.json}
    export.verify("runs/mnist_mlp/export")            # recomputes every sha256

Format packages (jax2onnx, onnxruntime, TensorFlow) are imported only when a
format that needs them is used: the core install stays TF-free.
"""

_NAMES = {"export": ("api", "export"), "verify": ("api", "verify"), "FORMATS": ("formats", "FORMATS"),
          "parse_formats": ("formats", "parse"), "VerifyError": ("manifest", "VerifyError"),
          "ParityError": ("parity", "ParityError")}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
  """Loads the names above on first use (PEP 562): importing the package, or research.export.cli for
  `scripts/export.py --help`, does not import JAX."""
  if name not in _NAMES:
    raise AttributeError(f"module 'research.export' has no attribute {name!r}")
  import importlib

  module, attr = _NAMES[name]
  return getattr(importlib.import_module(f"research.export.{module}"), attr)
