"""The Open Inference Protocol to the letter: a real Triton client against scripts/serve.py, the binary tensor data
extension byte by byte, and a text model under 64 concurrent clients.

One server (a real subprocess on loopback) serves the test run's shared smoke MLP as `mnist` and its shared smoke
Rotten Tomatoes Transformer as `reviews`; every answer is compared with the offline Predictor on the same inputs.
"""

import concurrent.futures
import gzip
import http.client
import json
import struct
import urllib.error
import urllib.request
import zlib

import numpy as np
import pytest

import research
from tests import serving
from tests.serving import Server

pytest.importorskip("starlette", reason="the `serve` extra is not installed: pip install -e '.[serve]'")
pytest.importorskip("onnxruntime", reason="the `onnx` extra is not installed: pip install -e '.[onnx]'")
httpclient = pytest.importorskip("tritonclient.http", reason="the `test` extra is not installed: pip install -e "
                                 "'.[test]'")

HEADER = "Inference-Header-Content-Length"
# Texts beyond ASCII: a BYTES element's length prefix counts UTF-8 bytes, not characters.
UNICODE = ["Un film très réussi, drôle et émouvant.", "Ужасно скучный фильм.", "最高の映画 🎬🍿", ""]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  return {"mnist": serving.export_smoke(tmp_path_factory, "mnist_mlp"),
          "reviews": serving.export_smoke(tmp_path_factory, "rotten_tomatoes_transformer")}


@pytest.fixture(scope="module")
def server(exports):
  server = Server("--model", f"mnist={exports['mnist']}", "--model", f"reviews={exports['reviews']}", "--no_auth",
                  "--max_wait_ms", "5")
  yield server
  code, err = server.stop()
  assert code == 0 and "Traceback" not in err, err[-3000:]


@pytest.fixture(scope="module")
def digits():
  from research.data import sources

  return sources.get_split("mnist", "test")["image"][:8]


def _offline(export_dir, raw: dict) -> dict:
  from research.serve import Predictor

  return Predictor.load(export_dir).predict(raw)


def _post(server, path: str, body: bytes, headers: dict) -> tuple[int, dict, bytes]:
  request = urllib.request.Request(server.url + path, body, headers)
  try:
    with urllib.request.urlopen(request, timeout=60) as r:
      return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
  except urllib.error.HTTPError as e:
    return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _text(values) -> list[str]:
  return [v.decode() if isinstance(v, bytes) else v for v in values]


def test_a_triton_client_gets_the_offline_answers_in_json_and_binary_for_every_datatype(server, exports, digits):
  client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
  assert client.is_server_live() and client.is_server_ready()
  assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
  assert client.is_model_ready("mnist") and client.is_model_ready("mnist", "1")
  assert not client.is_model_ready("nope") and not client.is_model_ready("mnist", "2")
  meta = client.get_model_metadata("mnist", "1")
  assert meta["name"] == "mnist" and meta["versions"] == ["1"] and meta["platform"] == "research/onnx"
  assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28, 1]}]
  assert meta["outputs"][0] == {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}
  want = want_uint8 = _offline(exports["mnist"], {"image": digits})

  for binary_in in (True, False):
    for binary_out in (True, False):
      image = httpclient.InferInput("image", list(digits.shape), "UINT8")
      image.set_data_from_numpy(digits, binary_data=binary_in)
      asked = [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in ("probabilities", "labels")]
      result = client.infer("mnist", [image], outputs=asked, request_id=f"r-{binary_in}-{binary_out}")
      response = result.get_response()
      assert response["id"] == f"r-{binary_in}-{binary_out}" and response["model_version"] == "1"
      assert [o["name"] for o in response["outputs"]] == ["probabilities", "labels"]  # only those asked for
      for output in response["outputs"]:  # binary: binary_data_size and no data; JSON: data and no parameters
        assert ("parameters" in output, "data" in output) == (binary_out, not binary_out)
      np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], atol=1e-6)
      assert _text(result.as_numpy("labels")) == want["labels"]

  # Every datatype the image takes, binary and (but BF16) JSON: the pixels as that type, the same answers.
  values = digits // 2  # 0-127: whole numbers every type holds exactly
  for kind, dtype in [("UINT8", np.uint8), ("UINT16", np.uint16), ("UINT32", np.uint32), ("UINT64", np.uint64),
                      ("INT8", np.int8), ("INT16", np.int16), ("INT32", np.int32), ("INT64", np.int64),
                      ("FP16", np.float16), ("FP32", np.float32), ("FP64", np.float64), ("BF16", np.float32),
                      ("BOOL", np.bool_)]:
    pixels = (values > 32) if kind == "BOOL" else values
    want = _offline(exports["mnist"], {"image": pixels.astype(np.uint8)})
    for binary_in in (True, False) if kind != "BF16" else (True,):
      image = httpclient.InferInput("image", list(pixels.shape), kind)
      image.set_data_from_numpy(pixels.astype(dtype), binary_data=binary_in)
      result = client.infer("mnist", [image])  # no outputs named: the client asks for all, in binary
      assert all(o["parameters"]["binary_data_size"] > 0 for o in result.get_response()["outputs"])
      np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"], atol=1e-6,
                                 err_msg=f"{kind} binary={binary_in}")
      np.testing.assert_array_equal(result.as_numpy("predictions"), want["predictions"])
  for algorithm in ("gzip", "deflate"):  # the client's request compression: the same answers
    image = httpclient.InferInput("image", list(digits.shape), "UINT8")
    image.set_data_from_numpy(digits)
    result = client.infer("mnist", [image], request_compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("probabilities"), want_uint8["probabilities"], atol=1e-6)
  client.close()


def test_the_binary_extension_byte_by_byte_and_its_errors(server, exports, digits):
  pixels = digits[:3]
  want = _offline(exports["mnist"], {"image": pixels})
  header = {"id": "b1", "inputs": [{"name": "image", "shape": [3, 28, 28, 1], "datatype": "UINT8",
                                    "parameters": {"binary_data_size": pixels.size}}],
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}, {"name": "predictions"},
                        {"name": "labels"}]}

  def infer(document, data=b"", model="mnist", **headers) -> tuple[int, dict, bytes]:
    head = json.dumps(document).encode() if isinstance(document, dict) else document
    return _post(server, f"/v2/models/{model}/infer", head + data,
                 {"Content-Type": "application/octet-stream", **({HEADER: str(len(head))} if data else {}), **headers})

  def body_of(document, data) -> bytes:
    return json.dumps(document).encode() + data

  def zipped(compressed: bytes, encoding: str) -> tuple[int, dict, bytes]:
    """A body sent compressed: Inference-Header-Content-Length counts the JSON of the decompressed body."""
    return _post(server, "/v2/models/mnist/infer", compressed, {
        "Content-Type": "application/octet-stream", HEADER: str(len(json.dumps(header))), "Content-Encoding": encoding})

  status, headers, body = infer(header, pixels.tobytes())
  assert status == 200 and headers["content-type"] == "application/octet-stream"
  for encoding, compress in (("gzip", gzip.compress), ("deflate", zlib.compress)):  # the same answer, compressed in
    compressed = zipped(compress(body_of(header, pixels.tobytes())), encoding)
    assert compressed[0] == 200 and compressed[2] == body, (encoding, compressed[2][:300])
  length = int(headers[HEADER.lower()])
  document = json.loads(body[:length])
  assert document["id"] == "b1" and document["model_name"] == "mnist" and document["model_version"] == "1"
  probabilities, predictions, names = document["outputs"]
  assert probabilities["datatype"] == "FP32" and probabilities["shape"] == [3, 10] and "parameters" not in probabilities
  np.testing.assert_allclose(probabilities["data"], want["probabilities"].reshape(-1), atol=1e-6)
  assert predictions == {"name": "predictions", "datatype": "INT64", "shape": [3], "parameters": {"binary_data_size": 24}}
  tail = body[length:]
  np.testing.assert_array_equal(np.frombuffer(tail[:24], "<i8"), want["predictions"])
  framed = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in want["labels"])
  assert names["parameters"] == {"binary_data_size": len(framed)} and tail[24:] == framed and len(tail) == 24 + len(framed)

  status, headers, body = infer({**header, "parameters": {}, "outputs": []}, pixels.tobytes())
  assert status == 200 and headers["content-type"] == "application/json" and HEADER.lower() not in headers
  assert json.loads(body)["outputs"] == []  # an empty list asks for no outputs

  image = header["inputs"][0]

  def text(count: int, data: bytes, kind="BYTES"):
    return infer({"inputs": [{"name": "text", "shape": [count], "datatype": kind,
                              "parameters": {"binary_data_size": len(data)}}]}, data, model="reviews")

  bad = [
      (infer(header, pixels.tobytes(), **{HEADER: "12x"}), "Inference-Header-Content-Length must be"),
      (infer(header, pixels.tobytes(), **{HEADER: "9" * 5000}), "Inference-Header-Content-Length must be"),
      (infer(header, pixels.tobytes(), **{HEADER: "99999"}), "the body has only"),
      (infer({**header, "inputs": [{**image, "datatype": ["UINT8"]}]}, pixels.tobytes()), "must be strings"),
      (infer(header, pixels.tobytes() + b"\0"), "add up to 2352"),
      (infer(header, pixels.tobytes()[:-1]), "runs past the end"),
      (infer({**header, "inputs": [{**image, "shape": [2, 28, 28, 1]}]}, pixels.tobytes()), "takes 1568"),
      (infer({**header, "inputs": [{**image, "datatype": "FP32"}]}, pixels.tobytes()), "takes 9408 (4 per"),
      (infer({**header, "inputs": [{**image, "datatype": "BOOL"}]}, pixels.tobytes()), "0 or 1"),
      (infer({**header, "inputs": [{**image, "parameters": {"binary_data_size": "2352"}}]}, pixels.tobytes()),
       "whole number of bytes"),
      (infer({**header, "inputs": [{**image, "data": [0]}]}, pixels.tobytes()), "not both"),
      (infer(header), "no Inference-Header-Content-Length header"),
      (infer({**header, "inputs": [{**image, "parameters": {}}]}), "needs data"),
      (infer({**header, "inputs": [{**image, "datatype": "BF16", "parameters": {}, "data": [0]}]}),
       "BF16 is sent as binary data only"),
      (infer({**header, "inputs": [image, image]}, pixels.tobytes() * 2), "given twice"),
      (infer({**header, "inputs": [{**image, "parameters": {"shared_memory_region": "r"}}]}), "shared memory"),
      (infer({**header, "outputs": [{"name": "labels", "parameters": {"classification": 2}}]}, pixels.tobytes()),
       "classification extension"),
      (infer({**header, "outputs": [{"name": "labels", "parameters": {"binary_data": 1}}]}, pixels.tobytes()),
       "binary_data must be true or false"),
      (infer({**header, "parameters": {"binary_data_output": "yes"}}, pixels.tobytes()),
       "binary_data_output must be true or false"),
      (infer({**header, "outputs": [{"name": "logits"}]}, pixels.tobytes()), "unknown output 'logits'"),
      (infer({**header, "id": 7}, pixels.tobytes()), "id must be a string"),
      (infer(b'{"inputs": [', pixels.tobytes()), "not valid JSON"),
      (infer(header, pixels.tobytes(), **{"Content-Encoding": "gzip"}), "the body is not gzip data"),
      (zipped(gzip.compress(body_of(header, pixels.tobytes()))[:-9], "gzip"), "the gzip body is cut short"),
      (zipped(zlib.compress(body_of(header, pixels.tobytes())) + b"x", "deflate"), "followed by other bytes"),
      (zipped(gzip.compress(b"\0" * (17 << 20)), "gzip"), "decompresses to more than"),  # 17 MB in 17 kB
      (infer(header, pixels.tobytes(), **{"Content-Encoding": "br"}), "Content-Encoding 'br' is not accepted"),
      # BYTES framing: a length past the end, too few elements, bytes left over, not UTF-8, an absurd count.
      (text(2, struct.pack("<I", 100) + b"abcd"), "says 100 bytes but 4"),
      (text(2, struct.pack("<I", 3) + b"abc" + b"\1\0"), "ends after 1 of 2"),
      (text(1, struct.pack("<I", 1) + b"ab"), "1 bytes are left"),
      (text(1, struct.pack("<I", 2) + b"\xff\xfe"), "not UTF-8"),
      (text(10**12, struct.pack("<I", 0)), "need at least"),
      (text(1, struct.pack("<I", 2) + b"ab", "UINT8"), "takes BYTES, not UINT8"),
  ]
  for i, ((status, _, body), words) in enumerate(bad):
    assert status in (400, 413, 415) and words in json.loads(body)["error"], (i, words, body[:300])
  assert [s for (s, _, _), _ in bad].count(415) == 1 and [s for (s, _, _), _ in bad].count(413) == 1
  assert server.call("/v2/health/ready")[0] == 200
  assert server.call("/v2")[2] == {"name": "research", "version": research.__version__,
                                   "extensions": ["binary_tensor_data"]}


def test_a_body_sent_in_chunks_is_read_whole_and_held_to_the_limit(server, exports, digits):
  """Transfer-Encoding: chunked (no Content-Length): the server reads every piece of the body, and a body that
  passes the 16 MB limit piece by piece is refused with 413."""
  body = json.dumps({"inputs": [{"name": "image", "shape": list(digits.shape), "datatype": "UINT8",
                                 "data": digits.reshape(-1).tolist()}]}).encode()

  def post_chunked(pieces) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=60)
    try:
      connection.request("POST", "/v2/models/mnist/infer", body=iter(pieces), encode_chunked=True,
                         headers={"Content-Type": "application/json"})
      response = connection.getresponse()
      return response.status, json.loads(response.read())
    finally:
      connection.close()

  third = len(body) // 3
  status, answer = post_chunked([body[:third], body[third:2 * third], body[2 * third:]])
  want = _offline(exports["mnist"], {"image": digits})
  assert status == 200, answer
  probabilities = next(o for o in answer["outputs"] if o["name"] == "probabilities")
  np.testing.assert_allclose(np.reshape(probabilities["data"], probabilities["shape"]), want["probabilities"],
                             atol=1e-6)
  status, answer = post_chunked([b" " * (1 << 20)] * 17)  # 17 MB of JSON whitespace
  assert status == 413 and "larger than" in answer["error"]


def test_the_text_model_takes_bytes_in_json_and_binary_from_64_concurrent_clients(server, exports):
  from research.data import sources

  texts = [*UNICODE, *sources.get_split("rotten_tomatoes", "test")["text"][:252]]
  want = _offline(exports["reviews"], {"text": texts})
  meta = server.call("/v2/models/reviews")[2]
  assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
  assert meta["outputs"][-1] == {"name": "labels", "datatype": "BYTES", "shape": [-1]}

  def client(i: int):
    rows = slice(i * 4, i * 4 + 1 + i % 4)  # 1 to 4 texts each
    binary = i % 2 == 1  # half send and receive JSON, half binary
    text = httpclient.InferInput("text", [len(texts[rows])], "BYTES")
    text.set_data_from_numpy(np.array(texts[rows], dtype=object), binary_data=binary)
    asked = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "labels")]
    body, length = httpclient.InferenceServerClient.generate_request_body([text], asked, request_id=f"c{i}")
    status, headers, answer = _post(server, "/v2/models/reviews/infer", body,
                                    {HEADER: str(length)} if length is not None else {})
    assert status == 200, answer[:300]
    assert (length is not None) == binary == (HEADER.lower() in headers)
    result = httpclient.InferenceServerClient.parse_response_body(answer, header_length=headers.get(HEADER.lower()))
    return rows, result

  with concurrent.futures.ThreadPoolExecutor(64) as pool:
    results = list(pool.map(client, range(64)))
  for i, (rows, result) in enumerate(results):
    assert result.get_response()["id"] == f"c{i}"
    np.testing.assert_allclose(result.as_numpy("probabilities"), want["probabilities"][rows], atol=1e-6)
    assert _text(result.as_numpy("labels")) == want["labels"][rows]
  assert want["label_names"] == ["negative", "positive"]
