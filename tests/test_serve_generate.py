"""Text generation over HTTP, for real: scripts/serve.py serving the shared smoke GPT, called with real sockets.

One server for the module (keys, an audit log, --max_streams 3), serving the GPT's export as `gpt` and the same
export without its generation section as `plain`. A language model's export always holds its generation
(prefill and decode as StableHLO, generate/); its ONNX model is what the server's predictor runs.
"""

import http.client
import json
import re
import shutil
import time

import pytest

from research.errors import InputError
from research.serve.generate import check_request
from tests import helpers
from tests import serving
from tests.serving import Server

pytest.importorskip("starlette", reason="the `serve` extra is not installed: pip install -e '.[serve]'")
pytest.importorskip("onnxruntime", reason="the `onnx` extra is not installed: pip install -e '.[onnx]'")

PROMPT = "ROMEO: But soft, what"  # 21 bytes: 60 more tokens slide the 32-token window three times
MAX_STREAMS = 3


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  return serving.export_smoke(tmp_path_factory, "shakespeare_gpt")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
  """A key file made as `serve.py --add_key` makes it (in this process: no interpreter to start per key)."""
  from research.serve.auth import add_key

  path = tmp_path_factory.mktemp("keys") / "keys.json"
  return path, {"full": add_key(path, "full", ["*"]), "plain": add_key(path, "plain", ["plain"], rate_per_s=1)}


@pytest.fixture(scope="module")
def server(export_dir, keys, tmp_path_factory):
  """The GPT, and a model that does not generate: the same export with its generation section taken out."""
  plain = tmp_path_factory.mktemp("plain") / "export"
  shutil.copytree(export_dir, plain)
  shutil.rmtree(plain / "generate")
  manifest = json.loads((plain / "manifest.json").read_text())
  del manifest["generation"]
  manifest["files"] = {k: v for k, v in manifest["files"].items() if not k.startswith("generate/")}
  (plain / "manifest.json").write_text(json.dumps(manifest))
  audit = tmp_path_factory.mktemp("audit") / "audit.jsonl"
  server = Server("--model", f"gpt={export_dir}", "--model", f"plain={plain}", "--keys", str(keys[0]),
                  "--max_streams", str(MAX_STREAMS), "--audit_log", str(audit))
  server.audit, server.key = audit, keys[1]["full"]
  yield server
  code, err = server.stop()
  assert code == 0 and "Traceback" not in err and keys[1]["full"] not in err and PROMPT not in err, err[-3000:]
  assert PROMPT not in audit.read_text()  # no payload in the audit log


class Events:
  """A :generate request over its own connection: the status, then the server-sent events as they arrive."""

  def __init__(self, server: Server, body: dict, key: str | None, request_id: str = ""):
    host, port = server.url.removeprefix("http://").split(":")
    self.connection = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}),
               **({"X-Request-Id": request_id} if request_id else {})}
    self.connection.request("POST", "/v1/models/gpt:generate", json.dumps(body), headers)
    self.response = self.connection.getresponse()
    self.status, self.headers = self.response.status, self.response.headers

  def next(self) -> dict:
    """The next event's JSON: every event is one `data: {...}` line and a blank line."""
    line, blank = self.response.readline(), self.response.readline()
    assert line.startswith(b"data: ") and blank == b"\n", (line, blank)
    return json.loads(line[6:])

  def rest(self) -> tuple[str, dict]:
    """(the text of the remaining events, the final event)."""
    text = ""
    while "text" in (event := self.next()):
      text += event["text"]
    assert self.response.read() == b""  # nothing after the final event
    return text, event

  def close(self) -> None:
    self.connection.close()


def _metric(server, name: str, labels: str) -> float:
  found = re.search(rf"^{name}\{{{labels}\}} (\S+)$", server.call("/metrics")[2], re.MULTILINE)
  return float(found.group(1)) if found else 0.0


def _decode_steps(server) -> tuple[float, float, float]:
  """(decode steps, rows advanced by them, steps that advanced one row) of the GPT so far."""
  return (_metric(server, "research_decode_rows_count", 'model="gpt"'),
          _metric(server, "research_decode_rows_sum", 'model="gpt"'),
          _metric(server, "research_decode_rows_bucket", 'le="1.0",model="gpt"'))


def _whole(server, key=None, **body) -> tuple[int, dict, dict]:
  return server.call("/v1/models/gpt:generate", body, key=key or server.key)


def test_a_seeded_stream_equals_the_script_and_the_whole_answer_and_is_counted_once(server, export_dir):
  sampling = dict(max_tokens=60, temperature=0.9, top_k=20, seed=5)
  served = _metric(server, "research_requests_total", 'model="gpt",status="200",version="1"')
  generated = _metric(server, "research_generated_tokens_total", 'model="gpt"')
  stream = Events(server, {"prompt": PROMPT, "stream": True, **sampling}, server.key, request_id="seeded-stream")
  assert stream.status == 200 and stream.headers["content-type"].startswith("text/event-stream")
  text, done = stream.rest()
  stream.close()
  assert done == {"done": True, "model": "gpt", "version": 1, "tokens": 60}
  script = helpers.run_script("generate.py", "--export", str(export_dir), "--prompt", PROMPT,
                              *[f"--{k}={v}" for k, v in sampling.items()], devices=1)
  assert script.returncode == 0, script.stderr[-2000:]
  assert script.stdout == PROMPT + text + "\n"
  status, _, whole = _whole(server, prompt=PROMPT, **sampling)
  assert status == 200 and whole == {"model": "gpt", "version": 1, "text": text, "tokens": 60}
  assert _metric(server, "research_requests_total", 'model="gpt",status="200",version="1"') == served + 2
  assert _metric(server, "research_generated_tokens_total", 'model="gpt"') == generated + 120
  audited = [json.loads(line) for line in server.audit.read_text().splitlines()]
  assert [(a["path"], a["status"], a["rows"]) for a in audited if a["request_id"] == "seeded-stream"] == [
      ("/v1/models/gpt:generate", 200, 1)]


def test_concurrent_streams_share_decode_steps_and_each_gets_its_own_text(server):
  # Greedy: rows that share a decode step may round their logits differently in the last bit (~1e-7), which
  # could flip a sampled draw that lands that close to a boundary; the argmax of the smoke GPT's logits is
  # never that close here, so each stream's text must equal its own single-stream generation exactly.
  requests = [("ROMEO: But soft", 400), ("JULIET:", 120), ("What light through yonder window breaks", 90)]
  alone = [_whole(server, prompt=p, max_tokens=n, temperature=0)[2]["text"] for p, n in requests]  # one at a time
  before = _decode_steps(server)
  streams = []
  for prompt, tokens in requests:  # each joins while the ones before it are decoding, at other positions
    streams.append(Events(server, {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True},
                          server.key))
    assert streams[-1].status == 200
    streams[-1].first = streams[-1].next()["text"]
  texts = []
  for stream, (_, tokens) in zip(streams, requests):
    text, done = stream.rest()
    assert done == {"done": True, "model": "gpt", "version": 1, "tokens": tokens}
    texts.append(stream.first + text)
    stream.close()
  assert texts == alone
  steps, rows, alone_steps = (after - b for after, b in zip(_decode_steps(server), before))
  # One row per token after each stream's first (drawn from its prefill), less the steps that slid a window.
  assert rows <= sum(tokens - 1 for _, tokens in requests) and steps < rows
  assert steps - alone_steps >= 60  # the later streams (120, 90 tokens) decoded along with the first


def test_a_client_that_goes_away_frees_its_row(server):
  streams = [Events(server, {"prompt": f"{i}", "max_tokens": 100_000, "stream": True}, server.key)
             for i in range(MAX_STREAMS)]
  assert [s.status for s in streams] == [200] * MAX_STREAMS and all("text" in s.next() for s in streams)
  status, headers, answer = _whole(server, prompt="one too many", max_tokens=1)
  assert status == 503 and int(headers["retry-after"]) >= 1 and "--max_streams" in answer["error"], answer
  streams.pop().close()
  deadline = time.monotonic() + 30
  while _metric(server, "research_streams", 'model="gpt",version="1"') > MAX_STREAMS - 1:
    assert time.monotonic() < deadline, "the closed stream still holds its row"
    time.sleep(0.05)
  status, _, answer = _whole(server, prompt="room again", max_tokens=3)
  assert status == 200 and answer["tokens"] == 3
  for stream in streams:
    stream.close()
  while _metric(server, "research_streams", 'model="gpt",version="1"') > 0:
    assert time.monotonic() < deadline, "closed streams still hold their rows"
    time.sleep(0.05)
  steps = _decode_steps(server)[0]
  time.sleep(0.5)
  assert _decode_steps(server)[0] <= steps + 1  # nothing decodes for clients that left (but a step in flight)


def test_bad_requests_are_400s_that_name_the_field_and_keys_apply(server, keys):
  for body, words in [
      ({}, "prompt must be a non-empty string"),
      ({"prompt": ""}, "prompt must be a non-empty string"),
      ({"prompt": 7}, "prompt must be a non-empty string"),
      ({"prompt": "a" * 20_001}, "at most 20000"),
      ({"prompt": "a\ud800"}, "surrogate"),  # refused as JSON that is not text
      ({"prompt": "a", "max_tokens": 0}, "max_tokens must be a whole number from 1"),
      ({"prompt": "a", "max_tokens": 2.5}, "max_tokens"),
      ({"prompt": "a", "max_tokens": True}, "max_tokens"),
      ({"prompt": "a", "temperature": -1}, "temperature must be a number from 0"),
      ({"prompt": "a", "temperature": "hot" * 100}, "got 'hothothot"),
      ({"prompt": "a", "top_k": -1}, "top_k must be a whole number"),
      ({"prompt": "a", "top_k": 10**30}, "top_k must be a whole number"),
      ({"prompt": "a", "seed": 2**32}, "seed must be a whole number"),
      ({"prompt": "a", "stream": "yes"}, "stream must be true or false"),
      ({"prompt": "a", "promt": "b"}, "unknown field 'promt'"),
      ([1], "must be a JSON object"),
  ]:
    status, _, answer = server.call("/v1/models/gpt:generate", body, key=server.key)
    assert status == 400 and words in answer["error"] and "\n" not in answer["error"], (body, answer)
  status, _, answer = server.call("/v1/models/gpt:generate", raw=b"{", key=server.key)
  assert status == 400 and "not valid JSON" in answer["error"]
  status, _, answer = server.call("/v1/models/plain:generate", {"prompt": "a"}, key=server.key)
  assert status == 400 and "does not generate text" in answer["error"]
  assert server.call("/v1/models/nope:generate", {"prompt": "a"}, key=server.key)[0] == 404
  assert server.call("/v1/models/gpt/versions/2:generate", {"prompt": "a"}, key=server.key)[0] == 404
  status, _, answer = server.call("/v1/models/gpt/versions/1:generate", {"prompt": "a", "max_tokens": 2},
                                  key=server.key)
  assert status == 200 and answer["version"] == 1 and answer["tokens"] == 2
  assert _whole(server, key="rk_wrong", prompt="a")[0] == 401
  status, _, answer = _whole(server, key=keys[1]["plain"], prompt="a")
  assert status == 403 and "may not call model 'gpt'" in answer["error"]
  codes = [server.call("/v1/models/plain:generate", {"prompt": "a"}, key=keys[1]["plain"])[0] for _ in range(3)]
  assert codes[0] == 400 and 429 in codes  # one request a second
  assert server.call("/healthz")[0] == 200  # still up


def test_the_openapi_bounds_of_a_generation_are_the_server_s():
  """Each bounded number of GenerateRequest in the served schema is accepted at its bound and refused past it."""
  from research.serve import openapi

  fields = openapi.SCHEMAS["GenerateRequest"]["properties"]
  valid = {"prompt": "a", "max_tokens": 1, "temperature": 1.0, "top_k": 0, "seed": 0}
  for name in ("max_tokens", "temperature", "top_k", "seed"):
    low, high = fields[name]["minimum"], fields[name]["maximum"]
    for value in (low, high):
      check_request(**{**valid, name: value})
    for value in (low - 1, high + 1):
      with pytest.raises(InputError, match=name):
        check_request(**{**valid, name: value})
