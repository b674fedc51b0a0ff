"""A LitServe server for the serving benchmark: one ONNX model in onnxruntime, LitServe's own batching on.

    <litserve venv>/bin/python research/bench/peer_litserve.py MODEL.onnx PORT MAX_BATCH_SIZE MAX_WAIT_MS

Takes and answers the Open Inference Protocol's JSON tensors (`{"inputs": [{"name", "shape", "datatype",
"data"}]}`) at POST /predict, the same bodies the other peers get. Runs in its own virtualenv (research/bench/
servers.py installs it): it imports nothing of the library.
"""

import sys

import litserve as ls
import numpy as np
import onnxruntime as ort

DTYPES = {"FP32": np.float32, "INT32": np.int32, "INT64": np.int64, "UINT8": np.uint8}


class OnnxAPI(ls.LitAPI):
  def setup(self, device):
    self.session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    self.output_names = [o.name for o in self.session.get_outputs()]

  def decode_request(self, request):
    return {t["name"]: np.asarray(t["data"], DTYPES[t["datatype"]]).reshape(t["shape"]) for t in request["inputs"]}

  def batch(self, inputs):
    return {name: np.concatenate([i[name] for i in inputs]) for name in inputs[0]}

  def predict(self, inputs):
    return dict(zip(self.output_names, self.session.run(None, inputs)))

  def unbatch(self, outputs):
    rows = len(next(iter(outputs.values())))
    return [{name: value[i:i + 1] for name, value in outputs.items()} for i in range(rows)]

  def encode_response(self, outputs):
    return {"outputs": [{"name": name, "shape": list(v.shape), "datatype": "FP32", "data": v.reshape(-1).tolist()}
                        for name, v in outputs.items()]}


if __name__ == "__main__":
  _, _, port, max_batch_size, max_wait_ms = sys.argv
  api = OnnxAPI(max_batch_size=int(max_batch_size), batch_timeout=float(max_wait_ms) / 1000)
  ls.LitServer(api, accelerator="cpu", workers_per_device=1).run(host="127.0.0.1", port=int(port), log_level="warning",
                                                                 generate_client_file=False)
