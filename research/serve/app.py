"""The HTTP server's application (Starlette): a simple JSON API, the Open Inference Protocol, health and metrics.

    GET  /healthz, /readyz                                   liveness, readiness (no key needed)
    GET  /v1/models                                          models, versions, signatures, label names
    POST /v1/models/{name}[/versions/{v}]:predict            {"instances": [...]} raw inputs -> predictions
    GET  /v2, /v2/health/live, /v2/health/ready              Open Inference Protocol (KServe v2 REST)
    GET  /v2/models/{name}[/versions/{v}][/ready]            model metadata, readiness
    POST /v2/models/{name}[/versions/{v}]/infer              typed tensors in and out, `id` echoed
    GET  /metrics                                            Prometheus text (a key needed unless on loopback)

Every request that reaches a model goes through its dynamic batcher. Errors are `{"error": "..."}` with a
4xx status that names the problem; bad input never causes a 5xx. No key and no payload appears in a log line
or a metric label.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Callable

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import research
from research.errors import InputError
from research.serve import oip
from research.serve.auth import Key, KeyRing
from research.serve.batcher import QueueFull
from research.serve.repository import Repository, Version

log = logging.getLogger("research.serve")


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
    self.load_failures.set(len(repo.failures))


def create_app(repo: Repository, *, keys: KeyRing | None, open_metrics: bool, max_body_bytes: int = 16 << 20,
               timeout_s: float = 30.0, on_ready: Callable[[], None] | None = None) -> Starlette:
  """`keys=None` serves without keys (only allowed on loopback, checked by the caller); `open_metrics` serves
  /metrics without a key (a loopback bind). `on_ready` runs once the server accepts requests."""
  metrics = Metrics(repo)
  for versions in repo.models.values():
    for entry in versions.values():
      entry.batcher.on_batch = lambda rows, model=entry.name: metrics.batch_rows.labels(model).observe(rows)

  def authorize(request: Request, model: str | None = None) -> Key | None:
    if keys is None:
      return None
    header = request.headers.get("authorization", "")
    presented = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key")
    key = keys.authenticate(presented)
    if key is None:
      raise HTTPError(401, "a valid API key is required: send 'Authorization: Bearer <key>'",
                      {"WWW-Authenticate": "Bearer"})
    if model is not None and not key.may_call(model):
      raise HTTPError(403, f"this key may not call model {model!r}")
    wait = key.take()
    if wait:
      raise HTTPError(429, f"rate limit of {key.rate_per_s:g} requests/s reached", {"Retry-After": str(int(wait) + 1)})
    return key

  def version_of(request: Request) -> Version:
    name, version = request.path_params["name"], request.path_params.get("version")
    try:
      return repo.get(name, int(version) if version is not None else None)
    except (KeyError, ValueError) as e:
      raise HTTPError(404, str(e).strip("'\"")) from None

  async def body_json(request: Request) -> dict:
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
      raise HTTPError(413, f"the body is larger than {max_body_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
      body += chunk
      if len(body) > max_body_bytes:
        raise HTTPError(413, f"the body is larger than {max_body_bytes} bytes")
    try:
      document = json.loads(body)
    except ValueError as e:
      raise HTTPError(400, f"the body is not valid JSON ({e})") from None
    if not isinstance(document, dict):
      raise HTTPError(400, f"the body must be a JSON object, not {type(document).__name__}")
    return document

  async def infer(entry: Version, raw: dict) -> dict[str, np.ndarray]:
    gauge = metrics.queue_rows.labels(entry.name, str(entry.version))
    try:
      gauge.set(entry.batcher.queued_rows)
      return await entry.batcher.submit(raw, timeout=timeout_s)
    except QueueFull as e:
      raise HTTPError(503, f"the server is busy: {e}", {"Retry-After": "1"}) from None
    except TimeoutError:
      raise HTTPError(504, f"the model did not answer within {timeout_s:g} s") from None
    finally:
      gauge.set(entry.batcher.queued_rows)

  def endpoint(handler, model_scoped: bool = True, auth: bool = True):
    async def wrapped(request: Request) -> Response:
      start, model, version, status = time.perf_counter(), request.path_params.get("name", ""), "", 500
      try:
        if auth:
          authorize(request, model if model_scoped and model else None)
        response = await handler(request)
        status = response.status_code
        return response
      except HTTPError as e:
        status = e.status
        return JSONResponse({"error": e.message}, status_code=e.status, headers=e.headers)
      except InputError as e:
        status = 400
        return JSONResponse({"error": str(e)}, status_code=400)
      except Exception:  # noqa: BLE001  (logged without the payload; the caller learns nothing internal)
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error"}, status_code=500)
      finally:
        if model and model in repo.models:
          version = request.path_params.get("version") or str(max(repo.models[model]))
          metrics.requests.labels(model, version, str(status)).inc()
          metrics.latency.labels(model).observe(time.perf_counter() - start)
    return wrapped

  # --- simple JSON API ---------------------------------------------------------------------------------------
  async def list_models(request: Request) -> Response:
    return JSONResponse({"models": [
        {"name": name, "versions": sorted(versions), "signature": versions[max(versions)].predictor.signature,
         "labels": versions[max(versions)].predictor.label_names} for name, versions in sorted(repo.models.items())],
        "failures": repo.failures})

  async def predict(request: Request) -> Response:
    entry = version_of(request)
    document = await body_json(request)
    instances = document.get("instances")
    if not isinstance(instances, list) or not instances:
      raise HTTPError(400, 'send {"instances": [...]}: a non-empty list of examples')
    signature = entry.predictor.signature
    if len(signature) == 1 and not all(isinstance(i, dict) for i in instances):
      raw = {next(iter(signature)): instances}
    elif all(isinstance(i, dict) for i in instances):
      raw = {name: [i.get(name) for i in instances] for name in {k for i in instances for k in i}}
    else:
      raise HTTPError(400, "instances must all be objects {input name: value} for a model of several inputs")
    outputs = await infer(entry, entry.predictor.check(raw))
    names = entry.predictor.label_names
    if "probabilities" not in outputs:
      return JSONResponse({"model": entry.name, "version": entry.version,
                           "outputs": {k: v.tolist() for k, v in outputs.items()}})
    return JSONResponse({"model": entry.name, "version": entry.version, "predictions": [
        {"class": int(c), "label": names[c] if names else str(c), "probabilities": p.tolist()}
        for c, p in zip(outputs["predictions"], outputs["probabilities"])]})

  # --- Open Inference Protocol (v2) --------------------------------------------------------------------------
  async def server_metadata(request: Request) -> Response:
    return JSONResponse({"name": "research", "version": research.__version__, "extensions": []})

  async def live(request: Request) -> Response:
    return JSONResponse({"live": True})

  async def ready(request: Request) -> Response:
    return JSONResponse({"ready": bool(repo.models)}, status_code=200 if repo.models else 503)

  async def model_metadata(request: Request) -> Response:
    return JSONResponse(oip.metadata(version_of(request)))

  async def model_ready(request: Request) -> Response:
    version_of(request)  # 404 if unknown
    return JSONResponse({"name": request.path_params["name"], "ready": True})

  async def v2_infer(request: Request) -> Response:
    entry = version_of(request)
    document = await body_json(request)
    raw, requested = oip.decode_request(document, entry.predictor.signature)
    outputs = await infer(entry, entry.predictor.check(raw))
    return JSONResponse(oip.encode_response(entry, document.get("id"), outputs, requested))

  async def metrics_page(request: Request) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

  async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})

  async def readiness(request: Request) -> Response:
    return JSONResponse({"ready": bool(repo.models), "failures": len(repo.failures)},
                        status_code=200 if repo.models else 503)

  open_ = dict(auth=False)
  routes = [
      Route("/healthz", endpoint(health, **open_)), Route("/readyz", endpoint(readiness, **open_)),
      Route("/v1/models", endpoint(list_models, model_scoped=False)),
      Route("/v1/models/{name}:predict", endpoint(predict), methods=["POST"]),
      Route("/v1/models/{name}/versions/{version}:predict", endpoint(predict), methods=["POST"]),
      Route("/v2", endpoint(server_metadata, model_scoped=False)),
      Route("/v2/health/live", endpoint(live, **open_)), Route("/v2/health/ready", endpoint(ready, **open_)),
      Route("/v2/models/{name}", endpoint(model_metadata)),
      Route("/v2/models/{name}/ready", endpoint(model_ready)),
      Route("/v2/models/{name}/versions/{version}", endpoint(model_metadata)),
      Route("/v2/models/{name}/versions/{version}/ready", endpoint(model_ready)),
      Route("/v2/models/{name}/infer", endpoint(v2_infer), methods=["POST"]),
      Route("/v2/models/{name}/versions/{version}/infer", endpoint(v2_infer), methods=["POST"]),
      Route("/metrics", endpoint(metrics_page, auth=not open_metrics, model_scoped=False)),
  ]
  @contextlib.asynccontextmanager
  async def lifespan(app):
    if on_ready:
      on_ready()
    yield

  return Starlette(routes=routes, lifespan=lifespan)
