"""The server's OpenAPI 3.1 schema, built from the app's own routes, and a docs page that reads it offline.

    GET  /openapi.json    the schema (no key: it describes the API, not the models, as FastAPI's does)
    GET  /docs            a self-contained page (no CDN, no outside asset): every operation, and a form to call it

A route's operation is OPERATIONS[(method, path without `/versions/{version}`)]; a versioned route adds that
parameter. Whether it needs a key, an admin's key, or a key scoped to its model comes from the route's endpoint
(Service.endpoint), so the schema says what the server does. `undocumented(routes)` lists the routes without an
entry: the tests require none, so a new route cannot go undescribed.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

import research
from research.serve.binary import DTYPES as BINARY_DATATYPES
from research.serve.generate import MAX_TOKENS
from research.serve.inputs import MAX_TEXT_CHARS
from research.serve.oip import DATATYPES

STR, INT, NUM = {"type": "string"}, {"type": "integer"}, {"type": "number"}
BOOL, OBJ = {"type": "boolean"}, {"type": "object"}


def obj(required: tuple[str, ...] = (), **properties) -> dict:
  return {"type": "object", "required": list(required), "properties": properties}


def closed(required: tuple[str, ...] = (), **properties) -> dict:
  """An object whose other fields the server refuses (400)."""
  return {**obj(required, **properties), "additionalProperties": False}


def array(items: dict, **rules) -> dict:
  return {"type": "array", "items": items, **rules}


def ref(name: str) -> dict:
  return {"$ref": f"#/components/schemas/{name}"}


def json_body(schema: dict, example=None) -> dict:
  return {"application/json": {"schema": schema, **({"example": example} if example is not None else {})}}


SHAPE = array({"type": "integer", "minimum": -1})
TENSOR = obj(("name", "datatype", "shape"), name=STR, datatype={"enum": list(DATATYPES)}, shape=SHAPE)
SCHEMAS = {
    "Error": obj(("error",), error={**STR, "description": "what is wrong and how to fix it"}),
    "ModelList": obj(("models", "failures"), models=array(obj(
        ("name", "versions", "signature"), name=STR, versions=array(INT), signature=OBJ,
        labels={"type": ["array", "null"], "items": STR})),
        failures={**OBJ, "additionalProperties": STR, "description": "name/version: why it is not served"}),
    "PredictRequest": obj(("instances",), instances=array({}, minItems=1, description=(
        "raw examples: pixels 0-255 as nested lists, or texts; {input name: value} each for a model of several"))),
    "Predictions": {"anyOf": [
        obj(("model", "version", "predictions"), model=STR, version=INT, predictions=array(obj(
            ("class", "label", "probabilities"), **{"class": INT}, label=STR, probabilities=array(NUM)))),
        obj(("model", "version", "outputs"), model=STR, version=INT,
            outputs={**OBJ, "additionalProperties": array({})}),
    ]},
    "GenerateRequest": closed(
        ("prompt",), prompt={**STR, "minLength": 1, "maxLength": MAX_TEXT_CHARS},
        max_tokens={**INT, "minimum": 1, "maximum": MAX_TOKENS, "default": 200},
        temperature={**NUM, "minimum": 0, "maximum": 100, "default": 1.0, "description": "0: greedy"},
        top_k={**INT, "minimum": 0, "maximum": 2**31 - 1, "default": 0, "description": "0: no cut"},
        seed={**INT, "minimum": 0, "maximum": 2**32 - 1, "default": 0},
        stream={**BOOL, "default": False, "description": "true: the text as server-sent events as it is made"}),
    "Generation": obj(("model", "version", "text", "tokens"), model=STR, version=INT, text=STR,
                      tokens={**INT, "description": "how many were generated"}),
    "ServerMetadata": obj(("name", "version", "extensions"), name=STR, version=STR, extensions=array(STR)),
    "ModelMetadata": obj(("name", "versions", "platform", "inputs", "outputs"), name=STR, versions=array(STR),
                         platform=STR, inputs=array(TENSOR), outputs=array(TENSOR)),
    "InferRequest": obj(("inputs",), id=STR, parameters=OBJ, inputs=array(obj(
        ("name", "shape", "datatype", "data"), name=STR, shape=array({"type": "integer", "minimum": 0}),
        datatype={"enum": list(DATATYPES)}, parameters=OBJ, data={**array({}), "description": "flat or nested"}),
        minItems=1), outputs=array(obj(("name",), name=STR, parameters=OBJ))),
    "InferResponse": obj(("model_name", "outputs"), model_name=STR, model_version=STR, id=STR, outputs=array(
        {**TENSOR, "properties": {**TENSOR["properties"], "data": array({}), "parameters": OBJ}})),
    "RepositoryIndex": array(obj(("name", "version", "state", "reason"), name=STR, version=STR,
                                 state={"enum": ["READY", "UNAVAILABLE"]}, reason=STR)),
    "Loaded": obj(("name", "versions", "failures"), name=STR, versions=array(INT),
                  failures={**OBJ, "additionalProperties": STR}),
    "Unloaded": obj(("name", "unloaded"), name=STR, unloaded=array(INT)),
}
BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary", "description": (
    "the binary tensor data extension: the JSON of Inference-Header-Content-Length bytes, then each binary "
    "tensor's bytes in the JSON's order (its parameters.binary_data_size); little-endian, row-major; BYTES "
    f"elements each after a 4-byte length; datatypes {', '.join(BINARY_DATATYPES)}, BYTES")}}}
EVENTS = {"text/event-stream": {"schema": {**STR, "description": (
    'with "stream": true: data: {"text": "..."} events as the text is made, then data: {"done": true, "model", '
    '"version", "tokens"}; a stream that fails after it started ends with data: {"error": "..."}')}}}
HEADER_LENGTH = {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
                 "schema": {"type": "integer", "minimum": 0},
                 "description": "with an application/octet-stream body: the length of its JSON part"}


def op(summary: str, ok: dict | None = None, *, body: dict | None = None, optional_body: bool = False,
       infer: bool = False, params: tuple[dict, ...] = (), also: dict | None = None, description: str = "") -> dict:
  """One operation: `ok` the 200 content, `body` the request content, `infer` for a model call through the batcher
  (503 when its queue is full, 504 past the time limit), `also` other answers {status: (description, content)}."""
  return dict(summary=summary, ok=ok, body=body, optional_body=optional_body, infer=infer, params=params,
              also=also or {}, description=description)


READY = json_body(obj(("ready", "failures"), ready=BOOL, failures={**INT, "description": "versions not served"}))
V2_READY = json_body(obj(("ready",), ready=BOOL))
OPERATIONS = {
    ("GET", "/healthz"): op("Liveness", json_body(obj(("status",), status=STR))),
    ("GET", "/readyz"): op("Readiness: 503 until a model is served", READY, also={503: ("no model is served", READY)}),
    ("GET", "/metrics"): op("Prometheus metrics (open on a loopback bind)", {"text/plain": {"schema": STR}}),
    ("GET", "/openapi.json"): op("This schema", json_body(OBJ)),
    ("GET", "/docs"): op("A page that shows this schema and calls its operations", {"text/html": {"schema": STR}}),
    ("GET", "/v1/models"): op("Models, versions, signatures, label names, load failures", json_body(ref("ModelList"))),
    ("POST", "/v1/models/{name}:predict"): op(
        "Predict from raw examples", json_body(ref("Predictions")), infer=True,
        body=json_body(ref("PredictRequest"), {"instances": ["a gripping, funny film"]})),
    ("POST", "/v1/models/{name}:generate"): op(
        "Continue a prompt (a language model's export; others: 400)", {**json_body(ref("Generation")), **EVENTS},
        infer=True, body=json_body(ref("GenerateRequest"), {
            "prompt": "ROMEO:", "max_tokens": 50, "temperature": 0.8, "top_k": 40, "seed": 0})),
    ("GET", "/v2"): op("Open Inference Protocol: server metadata", json_body(ref("ServerMetadata"))),
    ("GET", "/v2/health/live"): op("Open Inference Protocol: liveness", json_body(obj(("live",), live=BOOL))),
    ("GET", "/v2/health/ready"): op("Open Inference Protocol: readiness", V2_READY,
                                    also={503: ("no model is served", V2_READY)}),
    ("GET", "/v2/models/{name}"): op("A model's typed inputs and outputs", json_body(ref("ModelMetadata"))),
    ("GET", "/v2/models/{name}/ready"): op("A model's readiness", json_body(obj(("name", "ready"), name=STR,
                                                                                 ready=BOOL))),
    ("POST", "/v2/models/{name}/infer"): op(
        "Typed tensors in, typed tensors out", {**json_body(ref("InferResponse")), **BINARY}, infer=True,
        body={**json_body(ref("InferRequest"), {"id": "1", "inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a gripping, funny film"]}]}), **BINARY},
        params=(HEADER_LENGTH,),
        description="JSON, or the binary tensor data extension (application/octet-stream)."),
    ("POST", "/v2/repository/index"): op(
        "The model repository: every version on disk or served, and its state", json_body(ref("RepositoryIndex")),
        body=json_body(closed(ready={**BOOL, "description": "true: only the served versions"})), optional_body=True),
    ("POST", "/v2/repository/models/{name}/load"): op(
        "Read the model's directory now and serve what the version policy picks (400 if none loads)",
        json_body(ref("Loaded")), body=json_body(closed(parameters={**closed(), "description": (
            "Triton's clients send one; a load's config or files are refused: settings come from the export")})),
        optional_body=True),
    ("POST", "/v2/repository/models/{name}/unload"): op(
        "Stop serving every version of the model until a load", json_body(ref("Unloaded")),
        body=json_body(closed(parameters=closed(unload_dependents={
            "description": "accepted, as Triton's clients send it; no model depends on another here"}))),
        optional_body=True),
}
ERRORS = {400: "the request does not fit: the message names what and how to fix it",
          401: "no valid API key: send 'Authorization: Bearer <key>'", 403: "the key may not do this",
          404: "no such model or version",
          413: "the body (or what it decompresses to) is larger than the server's limit",
          415: "a Content-Encoding other than gzip or deflate",
          429: "the key's rate limit is reached (Retry-After)", 503: "the server is busy (Retry-After)",
          504: "the model did not answer within the server's time limit"}
_VERSION = "/versions/{version}"


def _methods(route) -> list[str]:
  return sorted(set(getattr(route, "methods", None) or ()) - {"HEAD"})


def undocumented(routes) -> list[str]:
  """'METHOD /path' of each route that OPERATIONS does not describe (a route of another kind: 'Mount /path')."""
  missing = []
  for route in routes:
    methods = _methods(route) if isinstance(route, Route) else [type(route).__name__]
    missing += [f"{m} {route.path}" for m in methods if (m, route.path.replace(_VERSION, "")) not in OPERATIONS]
  return missing


def build(routes, *, keys: bool) -> dict:
  """The schema of `routes` (those OPERATIONS describes); `keys`: whether the server asks for keys at all."""
  paths = {}
  for route in routes:
    for method in _methods(route) if isinstance(route, Route) else ():
      entry = OPERATIONS.get((method, route.path.replace(_VERSION, "")))
      if entry:
        paths.setdefault(route.path, {})[method.lower()] = _operation(route, method, entry, keys)
  security = {"bearer": {"type": "http", "scheme": "bearer"},
              "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
  return {"openapi": "3.1.0", "info": {"title": "research serving", "version": research.__version__, "description": (
      "Exported models over HTTP: a JSON API and the Open Inference Protocol. Errors are {\"error\": \"...\"}.")},
      "paths": paths, "components": {
          "schemas": SCHEMAS, "responses": {str(c): _response(m, json_body(ref("Error"))) for c, m in ERRORS.items()},
          "headers": {"X-Request-Id": {"schema": STR, "description": "the caller's if it is tame, else a new one"}},
          **({"securitySchemes": security} if keys else {})}}


def _operation(route: Route, method: str, entry: dict, keys: bool) -> dict:
  access = getattr(route.endpoint, "access", {"auth": True, "model_scoped": True, "admin": False})
  keyed, named = keys and access["auth"], "{name}" in route.path
  params = [{"name": n, "in": "path", "required": True, "schema": schema} for n, schema in
            (("name", {"type": "string", "minLength": 1}), ("version", {"type": "integer", "minimum": 0}))
            if "{" + n + "}" in route.path]
  scoped = keyed and (access["admin"] or (named and access["model_scoped"]))  # a key may be refused it (403)
  rules = [(keyed, {401, 429}), (scoped, {403}), (named, {404}), (entry["body"], {400, 413, 415}),
           (entry["infer"], {503, 504})]
  codes = set().union(*(statuses for when, statuses in rules if when))
  responses = {"200": _response("OK", entry["ok"])}
  responses |= {str(code): _response(*answer) for code, answer in entry["also"].items()}
  responses |= {str(c): {"$ref": f"#/components/responses/{c}"} for c in sorted(codes - set(entry["also"]))}
  operation = {"operationId": method.lower() + re.sub(r"\W+", "_", route.path).rstrip("_"), "summary": entry["summary"],
               "parameters": params + list(entry["params"]), "responses": responses}
  if entry["description"]:
    operation["description"] = entry["description"]
  if entry["body"]:
    operation["requestBody"] = {"required": not entry["optional_body"], "content": entry["body"]}
  operation["security"] = [{"bearer": []}, {"apiKey": []}] if keyed else []
  return operation


def _response(description: str, content: dict | None) -> dict:
  return {"description": description, "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}},
          **({"content": content} if content else {})}


def routes(service) -> list[Route]:
  built = {}

  async def schema(request: Request) -> Response:
    if "schema" not in built:  # the routes are fixed once the app is made
      built["schema"] = build(request.app.routes, keys=service.keys is not None)
    return JSONResponse(built["schema"])

  async def docs(request: Request) -> Response:
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'")})

  public = dict(auth=False, model_scoped=False)
  return [Route("/openapi.json", service.endpoint(schema, **public)),
          Route("/docs", service.endpoint(docs, **public))]


# The docs page: plain HTML and script, nothing fetched but /openapi.json and the calls it makes (its CSP says so).
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>research serving API</title><style>
body{font:14px system-ui,sans-serif;max-width:64em;margin:2em auto;padding:0 1em}
details{border:1px solid #ccc;border-radius:4px;margin:.4em 0;padding:.3em .6em}summary{cursor:pointer}
code,pre,textarea,input{font:13px ui-monospace,monospace}.m{display:inline-block;width:4.5em;font-weight:bold}
pre{background:#f6f6f6;padding:.5em;overflow:auto;max-height:24em}textarea{width:100%;height:8em}
</style></head><body>
<h1>research serving API</h1>
<p>The schema: <a href="openapi.json">openapi.json</a>. API key, sent as a Bearer token and kept in this page only:
<input id="key" type="password" size="48" autocomplete="off"></p>
<div id="ops">Reading the schema...</div>
<script>
"use strict";
function el(tag, props, ...kids) {
  const e = Object.assign(document.createElement(tag), props || {});
  e.append(...kids);
  return e;
}
const schemas = (content, doc) =>
  show(Object.fromEntries(Object.entries(content).map(([type, c]) => [type, deref(c.schema, doc)])));
const show = (x) => JSON.stringify(x, null, 2);
function deref(s, doc) {
  if (Array.isArray(s)) return s.map((x) => deref(x, doc));
  if (!s || typeof s !== "object") return s;
  if (s.$ref) return deref(s.$ref.split("/").slice(1).reduce((o, k) => o[k], doc), doc);
  return Object.fromEntries(Object.entries(s).map(([k, v]) => [k, deref(v, doc)]));
}
function operation(doc, path, method, op) {
  const named = (op.parameters || []).filter((p) => p.in === "path");
  const inputs = Object.fromEntries(named.map((p) => [p.name, el("input", {placeholder: p.name, size: 12})]));
  const json = op.requestBody && op.requestBody.content["application/json"];
  const body = json ? el("textarea", {value: show(json.example !== undefined ? json.example : {})}) : null;
  const out = el("pre", {textContent: "(not sent)"});
  async function send() {
    const url = path.replace(/\\{(\\w+)\\}/g, (_, n) => encodeURIComponent(inputs[n].value));
    const headers = {}, key = document.getElementById("key").value;
    if (key) headers.Authorization = "Bearer " + key;
    if (body) headers["Content-Type"] = "application/json";
    try {
      const r = await fetch(url, {method: method.toUpperCase(), headers, body: body ? body.value : undefined});
      out.textContent = r.status + " " + r.statusText + "\\n" + await r.text();
    } catch (e) { out.textContent = String(e); }
  }
  const answers = Object.entries(deref(op.responses, doc)).map(([code, r]) => code + " " + r.description +
    (r.content ? "\\n" + schemas(r.content, doc) : ""));
  return el("details", {id: op.operationId},
    el("summary", {}, el("span", {className: "m", textContent: method.toUpperCase()}), el("code", {textContent: path}),
       " " + op.summary + ((op.security || []).length ? " (key)" : "")),
    el("p", {textContent: op.description || ""}),
    ...(op.requestBody ? [el("p", {textContent: "Body:"}),
                          el("pre", {textContent: schemas(op.requestBody.content, doc)})] : []),
    el("p", {textContent: "Answers:"}), el("pre", {textContent: answers.join("\\n")}),
    el("p", {}, ...named.map((p) => el("label", {}, p.name + " ", inputs[p.name], " ")),
       el("button", {textContent: "Send", onclick: send})), body || "", out);
}
fetch("openapi.json").then((r) => r.json()).then((doc) => {
  const ops = document.getElementById("ops");
  ops.textContent = "";
  for (const [path, item] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(item)) ops.append(operation(doc, path, method, op));
}).catch((e) => { document.getElementById("ops").textContent = "Cannot read openapi.json: " + e; });
</script></body></html>
"""
