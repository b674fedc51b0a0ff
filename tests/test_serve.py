"""The HTTP server, for real: scripts/serve.py on a free loopback port, answered over HTTP by many clients.

The test run's shared smoke MLP (tests/helpers.py) is exported once; each server is a real subprocess.
"""

import concurrent.futures
import json
import re
import signal
import time

import numpy as np
import pytest

from tests import helpers
from tests import serving
from tests.serving import Server

pytest.importorskip("starlette", reason="the `serve` extra is not installed: pip install -e '.[serve]'")
pytest.importorskip("onnxruntime", reason="the `onnx` extra is not installed: pip install -e '.[onnx]'")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  return serving.export_smoke(tmp_path_factory, "mnist_cnn")


@pytest.fixture(scope="module")
def digits():
  from research.data import sources

  return sources.get_split("mnist", "test")["image"][:256]


def _offline(export_dir, pixels) -> np.ndarray:
  from research.serve import Predictor

  return Predictor.load(export_dir).predict({"image": pixels})["probabilities"]


@pytest.fixture(scope="module")
def batching_server(export_dir):
  server = Server("--model", f"mnist={export_dir}", "--no_auth", "--max_wait_ms", "5")
  yield server
  code, err = server.stop()
  assert code == 0 and "Traceback" not in err, err[-3000:]


def _ask(server, pixels: np.ndarray, v2: bool, request_id: str = "") -> tuple[int, np.ndarray | None]:
  """(status, probabilities) for raw pixels over the JSON API or the Open Inference Protocol."""
  if not v2:
    status, _, body = server.call("/v1/models/mnist:predict", {"instances": pixels.tolist()})
    return status, np.array([p["probabilities"] for p in body["predictions"]]) if status == 200 else None
  status, _, body = server.call("/v2/models/mnist/infer", {"id": request_id, "inputs": [
      {"name": "image", "shape": list(pixels.shape), "datatype": "UINT8", "data": pixels.reshape(-1).tolist()}]})
  if status != 200:
    return status, None
  assert body["id"] == request_id and body["model_name"] == "mnist"
  probs = next(o for o in body["outputs"] if o["name"] == "probabilities")
  return status, np.array(probs["data"]).reshape(probs["shape"])


def _metric(server, pattern: str) -> float:
  return float(re.search(pattern + r" (\S+)", server.call("/metrics")[2]).group(1))


SERVED = r'research_requests_total\{model="mnist",status="200",version="1"\}'


def test_64_concurrent_clients_get_exactly_their_own_predictions_over_both_protocols(batching_server, export_dir,
                                                                                     digits):
  want = _offline(export_dir, digits)

  def client(i: int):
    rows = slice(i * 4, i * 4 + 1 + i % 4)  # 1 to 4 rows each
    return rows, *_ask(batching_server, digits[rows], v2=i % 2 == 0, request_id=f"c{i}")

  with concurrent.futures.ThreadPoolExecutor(64) as pool:
    results = list(pool.map(client, range(64)))
  for rows, status, got in results:
    assert status == 200
    np.testing.assert_allclose(got, want[rows], atol=1e-6)
  count = _metric(batching_server, r'research_batch_rows_count\{model="mnist"\}')
  total = _metric(batching_server, r'research_batch_rows_sum\{model="mnist"\}')
  assert _metric(batching_server, SERVED) == 64
  assert total == sum(1 + i % 4 for i in range(64))  # every row once (warm-up not counted)
  assert count < 64  # requests were merged into fewer model calls


def test_a_bounded_load_has_zero_errors_and_every_answer_right(batching_server, export_dir, digits):
  """16 clients call back to back for 10 s (loopback only), 1 to 8 rows each time, over both protocols."""
  want, before = _offline(export_dir, digits), _metric(batching_server, SERVED)
  deadline = time.monotonic() + 10

  def client(i: int) -> int:
    calls, rng = 0, np.random.default_rng(i)
    while time.monotonic() < deadline:
      start = int(rng.integers(0, len(digits) - 8))
      rows = slice(start, start + int(rng.integers(1, 9)))
      status, got = _ask(batching_server, digits[rows], v2=bool(calls % 2), request_id=f"{i}-{calls}")
      assert status == 200, status
      np.testing.assert_allclose(got, want[rows], atol=1e-6)
      calls += 1
    return calls

  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    calls = sum(pool.map(client, range(16)))
  assert calls > 16 and _metric(batching_server, SERVED) - before == calls


def test_the_open_inference_protocols_metadata_health_and_errors(export_dir, digits):
  server = Server("--model", f"mnist={export_dir}", "--no_auth")
  try:
    assert server.call("/v2")[2]["name"] == "research"
    assert server.call("/v2/health/live")[2] == {"live": True} and server.call("/v2/health/ready")[0] == 200
    status, _, meta = server.call("/v2/models/mnist")
    assert status == 200 and meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28, 1]}]
    assert [o["name"] for o in meta["outputs"]] == ["probabilities", "predictions", "labels"]
    assert server.call("/v2/models/mnist/versions/1/ready")[2] == {"name": "mnist", "ready": True}
    pixels = digits[:3]
    tensor = {"name": "image", "shape": [3, 28, 28, 1], "datatype": "UINT8", "data": pixels.tolist()}  # nested
    status, _, body = server.call("/v2/models/mnist/infer", {"inputs": [tensor], "outputs": [{"name": "labels"}]})
    assert status == 200 and [o["name"] for o in body["outputs"]] == ["labels"] and "id" not in body
    assert body["outputs"][0]["datatype"] == "BYTES"
    assert body["outputs"][0]["data"] == [str(c) for c in _offline(export_dir, pixels).argmax(-1)]
    bad = {
        "/v2/models/nope/infer": ({"inputs": [tensor]}, 404, "no model 'nope'"),
        "/v2/models/mnist/versions/7/infer": ({"inputs": [tensor]}, 404, "no version 7"),
        "/v2/models/mnist/infer": ({"inputs": [{**tensor, "shape": [2, 28, 28, 1]}]}, 400, "holds 1568 values"),
    }
    for path, (body, code, words) in bad.items():
      status, _, answer = server.call(path, body)
      assert status == code and words in answer["error"], (path, answer)
    for body, words in [
        ({"inputs": [{**tensor, "datatype": "BYTES"}]}, "takes UINT8, not BYTES"),
        ({"inputs": [{**tensor, "datatype": "FP99"}]}, "unknown datatype"),
        ({"inputs": [{**tensor, "name": "pixels"}]}, "unknown input 'pixels'"),
        ({"inputs": [{**tensor, "data": [[300] * 784] * 3}]}, "0 to 255"),
        # flat UINT8 data takes a faster way in (research/serve/oip.py): its refusals are the same
        ({"inputs": [{**tensor, "data": [0] * 2351 + [256]}]}, "values in [0, 256]; uint8 takes 0 to 255"),
        ({"inputs": [{**tensor, "data": [-1] + [0] * 2351}]}, "values in [-1, 0]"),
        ({"inputs": [{**tensor, "data": [0.5] + [0] * 2351}]}, "whole numbers"),
        ({"inputs": [{**tensor, "data": [0] * 2351}]}, "holds 2352 values, data has 2351"),
        ({"inputs": [{**tensor, "data": [None] * 2352}]}, "must be numbers"),
        ({"inputs": [tensor], "outputs": [{"name": "logits"}]}, "unknown output 'logits'"),
        ({"inputs": "x"}, '{"inputs"'),
        ([1, 2], "JSON object"),
    ]:
      status, _, answer = server.call("/v2/models/mnist/infer", body)
      assert status == 400 and words in answer["error"], (body if len(str(body)) < 200 else words, answer)
    status, _, answer = server.call("/v1/models/mnist:predict", raw=b"{not json")
    assert status == 400 and "not valid JSON" in answer["error"]
    status, _, answer = server.call("/v1/nothing/here")
    assert status == 404 and "no such endpoint: GET /v1/nothing/here" in answer["error"]
    status, _, answer = server.call("/v1/models", {"instances": []})
    assert status == 405 and "does not take POST" in answer["error"]
    # inference POSTs skip Starlette's routing (research/serve/app.py): other methods and unknown models still answer
    status, _, answer = server.call("/v2/models/mnist/infer")
    assert status == 405 and "does not take GET" in answer["error"]
    status, _, answer = server.call("/v2/models/nothing/versions/3/infer", {"inputs": []})
    assert status == 404 and "nothing" in answer["error"], answer
    assert server.call("/healthz")[0] == 200  # still up
  finally:
    assert server.stop()[0] == 0


def test_keys_scopes_rate_limits_the_body_limit_and_the_audit_log(export_dir, digits, tmp_path):
  keys, audit = tmp_path / "keys.json", tmp_path / "audit.jsonl"

  def add(*args):
    done = helpers.run_script("serve.py", "--keys", str(keys), *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()

  full, other, slow = add("--add_key", "full"), add("--add_key", "other", "--key_models", "cifar"), add(
      "--add_key", "slow", "--key_rate", "1")
  assert full not in keys.read_text() and "full" in keys.read_text()  # stored as a salted hash
  server = Server("--model", f"mnist={export_dir}", "--keys", str(keys), "--max_body_mb", "0.01", "--host", "0.0.0.0",
                  "--audit_log", str(audit), "--audit_max_mb", "0.001", "--audit_backups", "50")  # not loopback only
  body = {"instances": digits[:1].tolist()}
  sent = []  # (key id, status) of every request, in order

  def call(key_id, key, path="/v1/models/mnist:predict", document=body):
    status, headers, answer = server.call(path, document, key=key)
    sent.append((key_id, status))
    return status, headers, answer

  try:
    status, headers, answer = call(None, None)
    assert status == 401 and "API key" in answer["error"] and headers.get("www-authenticate") == "Bearer"
    assert call(None, full + "x")[0] == 401
    assert call("full", full)[0] == 200
    status, _, answer = call("other", other)
    assert status == 403 and "may not call model 'mnist'" in answer["error"]
    codes = [call("slow", slow)[0] for _ in range(3)]
    assert codes[0] == 200 and 429 in codes
    status, headers, _ = call("slow", slow)
    assert status == 429 and int(headers["retry-after"]) >= 1
    status, _, answer = call("full", full, document={"instances": digits[:8].tolist()})
    assert status == 413 and "larger than" in answer["error"]
    status, headers, _ = call(None, None, "/healthz", None)
    assert status == 200 and headers["x-request-id"]  # health needs no key
    assert call(None, None, "/metrics", None)[0] == 401  # bound beyond loopback: metrics need a key
    status, _, metrics = call("other", other, "/metrics", None)
    limited = sum(1 for _, code in sent if code == 429)
    assert status == 200 and f'research_requests_total{{model="mnist",status="429",version="1"}} {limited:.1f}' in metrics
    assert full not in metrics and other not in metrics and "other" not in metrics  # no key, not even its id
  finally:
    code, err = server.stop()
  assert code == 0 and full not in err and other not in err
  files = sorted(tmp_path.glob("audit.jsonl*"), key=lambda f: int(f.suffix[1:]) if f.suffix[1:].isdigit() else 0,
                 reverse=True)  # oldest first
  assert len(files) > 2  # it rotated
  text = "".join(f.read_text() for f in files)
  assert full not in text and other not in text and slow not in text and "probabilities" not in text
  lines = [json.loads(line) for line in text.splitlines()]
  assert [(line["key_id"], line["status"]) for line in lines] == sent
  served = [line for line in lines if line["status"] == 200 and line["model"]]
  assert served and all(line["version"] == 1 and line["rows"] == 1 and line["batch_rows"] >= 1 and
                        line["client"] == "127.0.0.1" and line["latency_ms"] > 0 for line in served)
  assert len({line["request_id"] for line in lines}) == len(lines)


def test_bad_flags_are_one_line(export_dir):
  for args, words in [((f"--model=mnist={export_dir}",), "API keys are required"),
                      ((f"--model=mnist={export_dir}", "--no_auth", "--host", "0.0.0.0"), "loopback"),
                      (("--model", "mnist", "--no_auth"), "NAME=EXPORT_DIR"),
                      (("--models", "/nonexistent", "--no_auth"), "is not a directory"),
                      ((f"--model=mnist={export_dir}", "--no_auth", "--model_threads", "-1"), "--model_threads")]:
    done = helpers.run_script("serve.py", *args)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and words in done.stderr, done.stderr


def test_model_threads_sleep_when_idle_and_give_the_default_sessions_answers(export_dir, digits, monkeypatch):
  """The server's model calls run on --model_threads threads (default: the cores less the event loop's) that sleep
  when idle; onnxruntime's own default (0) spins. Either way the answers are the same."""
  from research.export import onnx
  from research.serve import Predictor
  from research.serve.server import default_model_threads

  for threads in (0, 1, 3):
    options = onnx.session(export_dir / onnx.FILE, threads).get_session_options()
    assert options.intra_op_num_threads == threads
    try:
      spinning = options.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # not set: onnxruntime spins
      spinning = None
    assert spinning == ("0" if threads else None)
  pixels = digits[:32]
  own, sleeping = (Predictor.load(export_dir, threads=t).predict({"image": pixels})["probabilities"] for t in (0, 1))
  np.testing.assert_allclose(sleeping, own, rtol=1e-5, atol=1e-7)
  monkeypatch.setattr("os.sched_getaffinity", lambda _: {0, 1, 2, 3})
  assert default_model_threads() == 3
  monkeypatch.setattr("os.sched_getaffinity", lambda _: {0})
  assert default_model_threads() == 1


def test_sigterm_finishes_the_requests_in_flight_then_exits_zero(export_dir, digits):
  server = Server("--model", f"mnist={export_dir}", "--no_auth", "--max_wait_ms", "50")
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    calls = [pool.submit(server.call, "/v1/models/mnist:predict", {"instances": digits[i:i + 1].tolist()})
             for i in range(8)]
    time.sleep(0.02)  # the requests are in the batcher's 50 ms window
    server.proc.send_signal(signal.SIGTERM)
    statuses = [c.result()[0] for c in calls]
  assert statuses == [200] * 8
  assert server.proc.wait(timeout=60) == 0


def test_an_internal_error_is_a_500_naming_the_request_and_one_line_for_the_operator(capsys):
  """A handler that breaks (no real request path is known to): the caller gets a request id and nothing internal;
  stderr gets one line naming the request and the exception's type (never its message, which may hold a payload)."""
  import asyncio

  from starlette.requests import Request

  from research.serve.app import Service
  from research.serve.repository import Repository

  async def broken(request):
    raise RuntimeError("secret payload 1234")

  wrapped = Service(Repository(), keys=None, max_body_bytes=1 << 20, timeout_s=1, audit=None).endpoint(broken)
  scope = {"type": "http", "method": "POST", "path": "/v1/models/m:predict", "headers": [(b"x-request-id", b"r-7")],
           "query_string": b"", "path_params": {"name": "m"}, "client": ("127.0.0.1", 5)}
  response = asyncio.run(wrapped(Request(scope)))
  assert response.status_code == 500 and json.loads(response.body) == {"error": "internal error (request r-7)"}
  lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
  assert lines == ["error: internal error on POST /v1/models/m:predict (request r-7): RuntimeError; the traceback "
                   "is in the log file (--verbose: on the console)"]
