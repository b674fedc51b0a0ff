"""The server against its own OpenAPI schema (research/serve/openapi.py): every route is described, and a
property-based fuzz of every operation (schemathesis: cases that fit the schema and cases that do not) finds no
5xx, with an admin's key and without one; every answer has a status, content type and body the schema documents.
A second fuzz (hypothesis) changes one place in a valid request of the served model (JSON predict, JSON infer,
binary infer) to any JSON value, where a random body seldom reaches. The server stays up with no traceback in its
log (--verbose puts its error log on stderr).

One real scripts/serve.py with keys serves the test run's shared smoke MLP as `mnist`; half the generated cases
name it, the rest names that are not served (the admin routes: only those, so no unload ends the fuzz early).
The cases are derandomized: each run sends the same ones. The schema fuzzed is built here from the app's routes
and must equal the one the server serves.
"""

import copy
import functools
import json
import math
import shutil
import signal
import subprocess
import threading
import types
import urllib.request

import numpy as np
import pytest

from tests import serving
from tests.serving import Server

pytest.importorskip("starlette", reason="the `serve` extra is not installed: pip install -e '.[serve]'")
pytest.importorskip("onnxruntime", reason="the `onnx` extra is not installed: pip install -e '.[onnx]'")
schemathesis = pytest.importorskip("schemathesis", reason="the `test` extra is not installed: pip install -e '.[test]'")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402  (schemathesis requires hypothesis)
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi import checks  # noqa: E402

from research.serve import binary, openapi  # noqa: E402

# Not `positive_data_acceptance`: a schema-valid body can still not fit the model (a text for an image model).
CHECKS = [not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_headers_conformance, checks.response_schema_conformance]


def _routes() -> list:
  """The routes of the app with no model, as scripts/serve.py makes it on loopback."""
  from research.serve.app import create_app
  from research.serve.repository import Repository

  return create_app(Repository(), keys=None, open_metrics=True).routes


EXAMPLES = 12  # per operation; each is sent twice (with the key, without)
NEAR_VALID_EXAMPLES = 100  # per kind of request to the served model
# The same cases every run, no example database written, no shrinking (a failure shows the case as found).
BOUNDED = dict(deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
               suppress_health_check=list(HealthCheck))
ADMIN_ROUTES = "/v2/repository/"
DOCUMENT = openapi.build(_routes(), keys=True)  # as the server below, with keys, builds it
OPERATIONS = [(method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item]


@functools.cache
def _fuzzed() -> "schemathesis.BaseSchema":
  return schemathesis.openapi.from_dict(copy.deepcopy(DOCUMENT))  # made when a fuzz runs: ~1 s, not at collection


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """The server, an admin key, and its stderr lines so far (read as they come, so the pipe never fills)."""
  from research.serve.auth import add_key

  export_dir = serving.export_smoke(tmp_path_factory, "mnist_mlp")
  keys = tmp_path_factory.mktemp("keys") / "keys.json"
  admin = add_key(keys, "admin", ["*"], admin=True)
  # --verbose: the server's own error log (an internal error's traceback) on stderr, not in the quiet console's file
  server = Server("--model", f"mnist={export_dir}", "--keys", str(keys), "--verbose")
  log: list[str] = []
  reader = threading.Thread(target=lambda: log.extend(server.proc.stderr), daemon=True)
  reader.start()
  yield types.SimpleNamespace(server=server, admin=admin, log=log, reader=reader)
  if server.proc.poll() is None:
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=60)
  reader.join(timeout=10)


def test_every_route_of_the_app_has_an_operation_in_the_schema():
  from starlette.routing import Route

  routes = _routes()
  assert openapi.undocumented(routes) == []
  assert {r.path for r in routes} == set(DOCUMENT["paths"])
  assert openapi.undocumented([Route("/v9/new", lambda r: None)]) == ["GET /v9/new"]  # the check can fail


def test_the_served_schema_is_valid_open_and_says_which_operations_need_a_key(served):
  with urllib.request.urlopen(served.server.url + "/openapi.json", timeout=30) as r:  # no key: the schema is open
    document = json.loads(r.read())
  assert document == DOCUMENT  # what the fuzz below generates from
  schemathesis.openapi.from_dict(document).validate()  # against the OpenAPI 3.1 meta-schema
  open_operations = {(method, path) for path, item in document["paths"].items() for method, op in item.items()
                     if not op["security"]}
  assert open_operations == {("get", p) for p in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs",
                                                  "/v2/health/live", "/v2/health/ready")}  # /metrics: loopback
  infer = document["paths"]["/v2/models/{name}/infer"]["post"]
  assert set(infer["requestBody"]["content"]) == {"application/json", "application/octet-stream"}
  assert {"401", "403", "404", "400", "413", "503", "504"} <= set(infer["responses"])


def test_the_docs_page_loads_nothing_from_elsewhere_shows_every_operation_and_calls_one(served, tmp_path):
  with urllib.request.urlopen(served.server.url + "/docs", timeout=30) as page:
    html, policy = page.read().decode(), page.headers["content-security-policy"]
  assert "default-src 'none'" in policy and "connect-src 'self'" in policy  # a browser fetches nothing else
  assert "http://" not in html and "https://" not in html and "src=" not in html
  node = shutil.which("node")
  if node is None:
    pytest.skip("no node to run the page's script")
  (tmp_path / "page.js").write_text(html[html.index("<script>") + 8:html.index("</script>")])
  (tmp_path / "browser.js").write_text(BROWSER)
  done = subprocess.run([node, tmp_path / "browser.js", tmp_path / "page.js", served.server.url, served.admin],
                        capture_output=True, text=True, timeout=60)
  assert done.returncode == 0, done.stderr
  shown = json.loads(done.stdout)
  assert shown["operations"] == [op["operationId"] for item in DOCUMENT["paths"].values() for op in item.values()]
  assert shown["models"].startswith("200 OK\n") and json.loads(shown["models"][7:])["models"][0]["name"] == "mnist"
  assert shown["predict"].startswith("400 ") and "must hold numbers" in shown["predict"]  # the example: a text


# The page's script in node with a stand-in DOM and the real fetch: it reads the schema from the server, then
# "Send" is pressed on GET /v1/models (with the key typed in) and on the predict example (for the model mnist).
BROWSER = """
const [script, base, key] = process.argv.slice(2);
class El {
  constructor(tag) { this.tag = tag; this.kids = []; this.value = ""; }
  append(...kids) { this.kids.push(...kids); }
  set textContent(text) { this.text = text; this.kids = []; }
  get textContent() { return this.text; }
  all() { return [this, ...this.kids.flatMap((k) => (k instanceof El ? k.all() : []))]; }
}
const ops = new El("div"), keyInput = new El("input");
globalThis.document = {createElement: (tag) => new El(tag), getElementById: (id) => ({ops, key: keyInput})[id]};
const realFetch = fetch;
globalThis.fetch = (url, options) => realFetch(new URL(url, base), options);
eval(require("fs").readFileSync(script, "utf8"));
async function press(id, name) {
  const op = ops.kids.find((d) => d.id === id), parts = op.all();
  for (const input of parts.filter((e) => e.tag === "input")) input.value = name;
  await parts.find((e) => e.tag === "button").onclick();
  return op.kids[op.kids.length - 1].textContent;
}
(async () => {
  for (let i = 0; i < 200 && !ops.kids.length; i++) await new Promise((done) => setTimeout(done, 50));
  keyInput.value = key;
  const shown = {operations: ops.kids.map((d) => d.id), models: await press("get_v1_models", ""),
                 predict: await press("post_v1_models_name_predict", "mnist")};
  console.log(JSON.stringify(shown));
})();
"""


def _strategy(operation):
  """Cases that fit the schema and cases that do not, for any model name and for the served model."""
  named = {n: v for n, v in (("name", "mnist"), ("version", 1)) if "{" + n + "}" in operation.path}
  fixed = [None] if not named or operation.path.startswith(ADMIN_ROUTES) else [None, named]
  return st.one_of([operation.as_strategy(mode, path_parameters=params) for mode in GenerationMode
                    for params in fixed])


@pytest.mark.parametrize("method, path", OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_fuzz_finds_no_server_error_with_or_without_a_key(method, path, served):
  operation, key = _fuzzed()[path][method], {"Authorization": f"Bearer {served.admin}"}

  @settings(max_examples=EXAMPLES, **BOUNDED)
  @given(case=_strategy(operation))
  def fuzz(case):
    for headers in (key, None):
      answer = case.call(base_url=served.server.url, headers=headers, timeout=60)
      assert answer.status_code < 500, (answer.status_code, answer.text[:500], served.log[-20:])
      case.validate_response(answer, headers=headers, checks=CHECKS)  # a documented status, type and body
    if operation.definition.raw["security"]:
      assert answer.status_code == 401 and "API key" in json.loads(answer.content)["error"]

  fuzz()


# Any JSON value, to put where a valid request has something else.
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=6)
GONE = object()  # a mutation that deletes the field instead


def _paths(node, path=()):
  """Every place in a JSON document (only the first two items of a list: the rest are alike)."""
  yield path
  items = node.items() if isinstance(node, dict) else enumerate(node[:2]) if isinstance(node, list) else ()
  for key, value in items:
    yield from _paths(value, (*path, key))


def _mutate(document, path, value):
  if not path:
    return value
  copied = copy.deepcopy(document)
  parent = functools.reduce(lambda node, key: node[key], path[:-1], copied)
  if value is GONE:
    del parent[path[-1]]
  else:
    parent[path[-1]] = value
  return copied


def _near_valid(kind: str, metadata: dict):
  """(path, the valid request, a strategy of requests): a request is (body, headers); each generated one is the valid
  request with one place in its JSON changed to any JSON value or deleted (`binary`: the binary extension's, with
  the JSON's length in its header sometimes wrong too)."""
  spec = metadata["inputs"][0]
  shape = [1, *spec["shape"][1:]]
  tensor = {"name": spec["name"], "shape": shape, "datatype": spec["datatype"]}
  path, tail = "/v2/models/mnist/infer", b""
  if kind == "predict":
    path, document = "/v1/models/mnist:predict", {"instances": np.zeros(shape, int).tolist()}
  elif kind == "infer":
    document = {"id": "a", "inputs": [{**tensor, "data": [0] * math.prod(shape)}], "outputs": [{"name": "labels"}]}
  else:
    tail = bytes(math.prod(shape) * np.dtype(binary.DTYPES[spec["datatype"]]).itemsize)
    document = {"inputs": [{**tensor, "parameters": {"binary_data_size": len(tail)}}],
                "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}

  def request(head: bytes, length: str | None = None) -> tuple[bytes, dict]:
    return head + tail, ({binary.HEADER: str(len(head)) if length is None else length} if kind == "binary" else {})

  heads = st.tuples(st.sampled_from(list(_paths(document))), JSON | st.just(GONE)).map(
      lambda change: b"" if change == ((), GONE) else json.dumps(_mutate(document, *change)).encode())
  lengths = st.one_of(st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=6),
                      st.integers(-2, 10**6).map(str), st.integers(1, 6000).map(lambda n: "9" * n))  # huge too
  lengths = lengths if kind == "binary" else st.none()
  return path, request(json.dumps(document).encode()), st.builds(request, heads, lengths)


@pytest.mark.parametrize("kind", ["predict", "infer", "binary"])
def test_near_valid_requests_to_the_served_model_get_no_server_error(served, kind):
  import requests

  key = {"Authorization": f"Bearer {served.admin}", "Content-Type": "application/json"}
  metadata = requests.get(served.server.url + "/v2/models/mnist", headers=key, timeout=60).json()
  path, valid, near_valid = _near_valid(kind, metadata)
  post = lambda body, headers: requests.post(served.server.url + path, body, headers={**key, **headers}, timeout=60)
  assert post(*valid).status_code == 200  # what the cases change is a request that works

  @settings(max_examples=NEAR_VALID_EXAMPLES, **BOUNDED)
  @given(request=near_valid)
  def fuzz(request):
    answer = post(*request)
    assert answer.status_code < 500, (answer.status_code, answer.text[:500], request[0][:300], served.log[-20:])
    if answer.status_code >= 400:
      assert isinstance(answer.json()["error"], str)

  fuzz()


def test_after_the_fuzz_the_server_is_up_and_its_log_holds_no_traceback(served):
  server = served.server
  with urllib.request.urlopen(server.url + "/healthz", timeout=30) as r:
    assert r.status == 200
  server.proc.send_signal(signal.SIGTERM)
  assert server.proc.wait(timeout=60) == 0
  served.reader.join(timeout=10)
  text = "".join(served.log)
  assert "Traceback" not in text and "internal error" not in text, text[-3000:]
