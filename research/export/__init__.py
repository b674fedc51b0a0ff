"""Export a trained model for deployment, prove each artifact matches JAX, and describe it in manifest.json.

    from research import export
    export.export("runs/mnist_mlp", formats="onnx")   # -> runs/mnist_mlp/export/{model.onnx, manifest.json}
    export.verify("runs/mnist_mlp/export")            # recomputes every sha256

Format packages (jax2onnx, onnxruntime, TensorFlow) are imported only when a
format that needs them is used: the core install stays TF-free.
"""

from research.export.api import export, verify  # noqa: F401
from research.export.formats import FORMATS, parse as parse_formats  # noqa: F401
from research.export.manifest import VerifyError  # noqa: F401
from research.export.parity import ParityError  # noqa: F401
