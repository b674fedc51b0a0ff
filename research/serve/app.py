"""The HTTP server's application (Starlette): what every route shares, and the routes put together.

    GET  /healthz, /readyz                                   liveness, readiness (no key needed)
    GET  /metrics                                            Prometheus text (a key needed unless on loopback)
    /v1/...                                                  the simple JSON API (research/serve/api_v1.py)
    /v2/...                                                  the Open Inference Protocol (research/serve/api_v2.py)
    GET  /openapi.json, /docs                                the OpenAPI schema and its page (research/serve/openapi.py)

Every request that reaches a model goes through its dynamic batcher. Errors are `{"error": "..."}` with a
4xx status that names the problem; bad input never causes a 5xx. No key and no payload appears in a log line,
a metric label or the audit log (research/serve/audit.py).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import sys
import time
import zlib
from typing import Any, Callable

import numpy as np
from prometheus_client import (
  CONTENT_TYPE_LATEST,
  CollectorRegistry,
  Counter,
  Gauge,
  Histogram,
  generate_latest,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from research.errors import InputError
from research.serve.audit import AuditLog
from research.serve.auth import Key, KeyRing
from research.serve.batcher import QueueFull
from research.serve.jsonio import JSONResponse, loads
from research.serve.repository import Repository, Version

log = logging.getLogger("research.serve")
_REQUEST_ID = re.compile(r"[\w.:-]{1,128}")  # a caller's X-Request-Id is echoed only if it is this tame
# Ids the server gives: unique per server start (a random prefix) and per request (a counter); uuid4 per request
# cost ~3% of the server's CPU time.
_ID_PREFIX = os.urandom(6).hex()
_request_ids = (f"{_ID_PREFIX}-{n:x}" for n in itertools.count(1))


class HTTPError(Exception):
  def __init__(self, status: int, message: str, headers: dict | None = None):
    super().__init__(message)
    self.status, self.message, self.headers = status, message, headers or {}


class Metrics:
  def __init__(self, repo: Repository):
    self.registry = CollectorRegistry()
    self.requests = Counter("research_requests", "Requests by model, version and HTTP status.",
                            ["model", "version", "status"], registry=self.registry)
    self.latency = Histogram("research_request_seconds", "Request latency, receipt to response.", ["model"],
                             registry=self.registry,
                             buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5, 1, 2, 5))
    self.batch_rows = Histogram("research_batch_rows", "Rows per model call after dynamic batching.", ["model"],
                                registry=self.registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
    self.queue_rows = Gauge("research_queue_rows", "Rows waiting in a model's batcher.", ["model", "version"],
                            registry=self.registry)
    self.load_failures = Gauge("research_load_failures", "Model versions that failed to load or verify.",
                               registry=self.registry)
    self.load_failures.set_function(lambda: len(repo.failures))
    self._children: dict[tuple, Any] = {}

  def of(self, metric, *labels: str):
    """`metric.labels(*labels)`, looked up once: prometheus_client's lookup took 3-4 us of every request. (The
    label values are bounded: served models and versions, and HTTP statuses.)"""
    key = (metric, labels)
    child = self._children.get(key)
    if child is None:
      child = self._children[key] = metric.labels(*labels)
    return child


class Service:
  """What every route shares: the repository, the keys, the limits, the metrics and the audit log."""

  def __init__(self, repo: Repository, *, keys: KeyRing | None, max_body_bytes: int, timeout_s: float,
               audit: AuditLog | None):
    self.repo, self.keys, self.max_body_bytes, self.timeout_s, self.audit = repo, keys, max_body_bytes, timeout_s, audit
    self.metrics = Metrics(repo)

  def authorize(self, request: Request, model: str | None = None, admin: bool = False) -> Key | None:
    if self.keys is None:
      return None
    header = request.headers.get("authorization", "")
    presented = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key")
    key = self.keys.authenticate(presented)
    if key is None:
      raise HTTPError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                      {"WWW-Authenticate": "Bearer"})
    request.state.key_id = key.id
    if model is not None and not key.may_call(model):
      raise HTTPError(403, f"this key may not call model {model!r}")
    if admin and not key.admin:
      raise HTTPError(403, "this key may not administer the server (add one with --add_key ID --key_admin)")
    wait = key.take()
    if wait:
      raise HTTPError(429, f"rate limit of {key.rate_per_s:g} requests/s reached", {"Retry-After": str(int(wait) + 1)})
    return key

  def version_of(self, request: Request) -> Version:
    name, version = request.path_params["name"], request.path_params.get("version")
    try:
      entry = self.repo.get(name, int(version) if version is not None else None)
    except ValueError:  # int()'s own message would not say what a version is
      raise HTTPError(404, f"no version {version!r}: versions are whole numbers") from None
    except KeyError as e:
      raise HTTPError(404, str(e).strip("'\"")) from None
    request.state.version = entry.version
    return entry

  async def body(self, request: Request) -> bytes:
    """The request's body, decompressed if its Content-Encoding is gzip or deflate (as tritonclient sends with
    request compression on); the limit holds for what is sent and for what it decompresses to."""
    headers = request.headers
    length = headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
      raise HTTPError(413, f"the body is larger than {self.max_body_bytes} bytes")
    chunks, size = [], 0
    while True:  # the ASGI messages themselves: Starlette's stream(), an async generator, cost ~8 us more a request
      message = await request.receive()
      if message["type"] == "http.disconnect":
        raise ClientDisconnect()
      chunks.append(message.get("body", b""))
      size += len(chunks[-1])
      if size > self.max_body_bytes:
        raise HTTPError(413, f"the body is larger than {self.max_body_bytes} bytes")
      if not message.get("more_body", False):
        break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return decompressed(body, headers.get("content-encoding", "identity"), self.max_body_bytes)

  async def body_json(self, request: Request) -> dict:
    return parse_json_object(await self.body(request))

  async def infer(self, request: Request, entry: Version, raw: dict) -> dict[str, np.ndarray]:
    """Checked raw inputs through the version's batcher; the caller's rows of the outputs."""
    gauge, state = self.metrics.of(self.metrics.queue_rows, entry.name, str(entry.version)), request.state
    state.rows = len(next(iter(raw.values())))
    try:
      gauge.set(entry.batcher.queued_rows)
      batched = await entry.batcher.submit(raw, timeout=self.timeout_s)
    except QueueFull as e:
      raise HTTPError(503, f"the server is busy: {e}", {"Retry-After": "1"}) from None
    except TimeoutError:
      raise HTTPError(504, f"the model did not answer within {self.timeout_s:g} s") from None
    finally:
      gauge.set(entry.batcher.queued_rows)
    state.batch_rows = batched.batch_rows
    return batched.outputs

  def endpoint(self, handler, *, model_scoped: bool = True, auth: bool = True, admin: bool = False):
    """The handler with keys checked, errors as {"error"} bodies, and the request counted, timed and audited."""

    async def wrapped(request: Request) -> Response:
      start, model, status = time.perf_counter(), request.path_params.get("name", ""), 500
      given = request.headers.get("x-request-id", "")
      request_id = given if _REQUEST_ID.fullmatch(given) else next(_request_ids)
      response = None
      try:
        if auth:
          self.authorize(request, model if model_scoped and model else None, admin)
        response = await handler(request)
      except HTTPError as e:
        response = JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)
      except InputError as e:
        response = JSONResponse({"error": str(e)}, status_code=400)
      except Exception as e:  # noqa: BLE001  (the caller learns nothing internal; the operator sees one line)
        log.exception("internal error on %s %s (request %s)", request.method, request.url.path, request_id)
        print(f"error: internal error on {request.method} {request.url.path} (request {request_id}): "
              f"{type(e).__name__}; the traceback is in the log file (--verbose: on the console)", file=sys.stderr)
        response = JSONResponse({"error": f"internal error (request {request_id})"}, status_code=500)
      finally:
        status = response.status_code if response is not None else 500
        self._account(request, request_id, model, status, time.perf_counter() - start)
      # (appended, not set: no handler sets it, so there is none to scan for)
      response.raw_headers.append((b"x-request-id", request_id.encode("latin-1")))
      return response

    wrapped.access = dict(auth=auth, model_scoped=model_scoped, admin=admin)  # what the OpenAPI schema states
    return wrapped

  def _account(self, request: Request, request_id: str, model: str, status: int, seconds: float) -> None:
    state = request.state
    version = getattr(state, "version", None)
    served = self.repo.models.get(model) if model else None  # read once: an unload may replace the dict
    if served is not None:
      label = str(version if version is not None else max(served, default=0))
      self.metrics.of(self.metrics.requests, model, label, str(status)).inc()
      self.metrics.of(self.metrics.latency, model).observe(seconds)
    if self.audit:
      self.audit.write({"request_id": request_id, "key_id": getattr(state, "key_id", None),
                        "client": request.client.host if request.client else None, "method": request.method,
                        "path": request.url.path, "model": model or None, "version": version, "status": status,
                        "latency_ms": round(seconds * 1000, 3), "rows": getattr(state, "rows", None),
                        "batch_rows": getattr(state, "batch_rows", None)})


def parse_json_object(body: bytes) -> dict:
  try:
    document = loads(body)
  except ValueError as e:
    raise HTTPError(400, f"the body is not valid JSON ({e})") from None
  if not isinstance(document, dict):
    raise HTTPError(400, f"the body must be a JSON object, not {type(document).__name__}")
  return document


# Content-Encoding -> zlib's wbits for it (HTTP's "deflate" is the zlib format).
ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def decompressed(body: bytes, encoding: str, limit: int) -> bytes:
  """`body` as sent with Content-Encoding `encoding` (identity, gzip or deflate), at most `limit` bytes once
  decompressed; HTTPError 415 (another encoding), 413 (larger) or 400 (not that encoding's data)."""
  encoding = encoding.strip().lower()
  if encoding == "identity":
    return body
  if encoding not in ENCODINGS:
    raise HTTPError(415, f"Content-Encoding {encoding!r} is not accepted: send gzip, deflate or the body as is")
  decoder = zlib.decompressobj(ENCODINGS[encoding])
  try:
    data = decoder.decompress(body, limit + 1)
  except zlib.error as e:
    raise HTTPError(400, f"the body is not {encoding} data ({e})") from None
  if len(data) > limit:
    raise HTTPError(413, f"the body decompresses to more than {limit} bytes")
  if not decoder.eof or decoder.unused_data:
    raise HTTPError(400, f"the {encoding} body is {'cut short' if not decoder.eof else 'followed by other bytes'}")
  return data


def create_app(repo: Repository, *, keys: KeyRing | None, open_metrics: bool, max_body_bytes: int = 16 << 20,
               timeout_s: float = 30.0, audit: AuditLog | None = None,
               on_ready: Callable[[], None] | None = None, max_streams: int = 16) -> Starlette:
  """`keys=None` serves without keys (only allowed on loopback, checked by the caller); `open_metrics` serves
  /metrics without a key (a loopback bind). `on_ready` runs once the server accepts requests."""
  from research.serve import api_v1, api_v2, openapi
  from research.serve import api_admin
  from research.serve import api_generate

  service = Service(repo, keys=keys, max_body_bytes=max_body_bytes, timeout_s=timeout_s, audit=audit)

  def count_batches(entry) -> None:  # every version served, those loaded later too
    entry.batcher.on_batch = service.metrics.of(service.metrics.batch_rows, entry.name).observe

  repo.on_serve(count_batches)

  async def metrics_page(request: Request) -> Response:
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

  async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})

  async def readiness(request: Request) -> Response:
    return JSONResponse({"ready": bool(repo.models), "failures": len(repo.failures)},
                        status_code=200 if repo.models else 503)

  routes = [Route("/healthz", service.endpoint(health, auth=False)),
            Route("/readyz", service.endpoint(readiness, auth=False)),
            Route("/metrics", service.endpoint(metrics_page, auth=not open_metrics, model_scoped=False)),
            *api_admin.routes(service),
            *api_generate.routes(service, max_streams),
            *api_v1.routes(service), *api_v2.routes(service), *openapi.routes(service)]

  @contextlib.asynccontextmanager
  async def lifespan(app):
    if on_ready:
      on_ready()
    yield

  async def unrouted(request: Request, error: StarletteHTTPException) -> Response:
    """An unknown path or a wrong method: {"error"} like every other answer, not Starlette's plain text."""
    words = {404: f"no such endpoint: {request.method} {request.url.path} (GET /openapi.json lists them)",
             405: f"{request.url.path} does not take {request.method}"}
    return JSONResponse({"error": words.get(error.status_code, error.detail)}, status_code=error.status_code,
                        headers=getattr(error, "headers", None))

  return _App(routes=routes, lifespan=lifespan, exception_handlers={StarletteHTTPException: unrouted})


INFERENCE = ("/infer", ":predict")  # the routes that call a model: the ones a busy server answers most


class _App(Starlette):
  """Starlette, except that a POST to a model's inference route goes straight to its endpoint.

  Those requests skip Starlette's middleware (the endpoint already turns every error into an answer), its route
  scan (a regular expression per route until one matches) and its per-route wrappers: together a fifth of the
  server's time per request for a small model with batching on (docs/performance.md). Everything else, a GET or
  HEAD to the same paths included, takes Starlette's way."""

  def __init__(self, *, routes: list[Route], **kwargs):
    super().__init__(routes=routes, **kwargs)
    self._inference = [(r.path_regex, r.param_convertors, r.endpoint) for r in routes if r.path.endswith(INFERENCE)]

  async def __call__(self, scope, receive, send) -> None:
    if scope["type"] == "http" and scope["method"] == "POST":
      root, path = scope.get("root_path", ""), scope["path"]
      path = path[len(root):] if root and path.startswith(root) else path
      for regex, convertors, endpoint in self._inference:
        if found := regex.match(path):
          scope["app"] = self
          scope["path_params"] = {k: convertors[k].convert(v) for k, v in found.groupdict().items()}
          response = await endpoint(Request(scope, receive))
          await response(scope, receive, send)
          return
    await super().__call__(scope, receive, send)
