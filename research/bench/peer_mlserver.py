"""An MLServer runtime for the serving benchmark: one ONNX model in onnxruntime behind MLServer's adaptive batching.

research/bench/servers.py writes the model-settings.json that names `peer_mlserver.OnnxModel` (with the model's
path and MLServer's `max_batch_size`, `max_batch_time`) and starts `mlserver start` in MLServer's own virtualenv:
this file imports nothing of the library. Requests are Open Inference Protocol tensors at /v2/models/NAME/infer.
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
  async def load(self) -> bool:
    self.session = ort.InferenceSession(self.settings.parameters.uri, providers=["CPUExecutionProvider"])
    self.output_names = [o.name for o in self.session.get_outputs()]
    return True

  async def predict(self, payload: InferenceRequest) -> InferenceResponse:
    inputs = {t.name: NumpyCodec.decode_input(t) for t in payload.inputs}
    outputs = self.session.run(None, inputs)
    return InferenceResponse(model_name=self.name, outputs=[
        NumpyCodec.encode_output(name, np.asarray(value)) for name, value in zip(self.output_names, outputs)])
