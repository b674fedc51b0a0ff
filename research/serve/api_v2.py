"""The Open Inference Protocol (KServe v2 REST); the tensors' encoding is research/serve/oip.py.

    GET  /v2, /v2/health/live, /v2/health/ready               server metadata, liveness, readiness
    GET  /v2/models/{name}[/versions/{v}][/ready]             model metadata, readiness
    POST /v2/models/{name}[/versions/{v}]/infer               typed tensors in and out, `id` echoed

Tensors travel as JSON or, with the binary tensor data extension (research/serve/binary.py), as raw bytes after the
JSON; a response is binary where the request asks for it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import research
from research.serve import binary, oip
from research.serve.jsonio import JSONResponse


def routes(service) -> list[Route]:
  from research.serve.app import parse_json_object

  repo = service.repo

  async def server_metadata(request: Request) -> Response:
    return JSONResponse({"name": "research", "version": research.__version__, "extensions": [binary.EXTENSION]})

  async def live(request: Request) -> Response:
    return JSONResponse({"live": True})

  async def ready(request: Request) -> Response:
    return JSONResponse({"ready": bool(repo.models)}, status_code=200 if repo.models else 503)

  async def model_metadata(request: Request) -> Response:
    entry = service.version_of(request)
    served = repo.models.get(entry.name) or {entry.version: entry}  # read once: a reload replaces the dict
    return JSONResponse(oip.metadata(entry, sorted(served)))

  async def model_ready(request: Request) -> Response:
    service.version_of(request)  # 404 if unknown
    return JSONResponse({"name": request.path_params["name"], "ready": True})

  async def infer(request: Request) -> Response:
    entry = service.version_of(request)
    header, tail = binary.split(await service.body(request), request.headers.get(binary.HEADER))
    call = oip.decode_request(parse_json_object(header), entry, tail)
    outputs = await service.infer(request, entry, entry.predictor.check(call.inputs))
    document, chunks = oip.encode_response(entry, call, outputs)
    if not chunks:
      return JSONResponse(document)
    content, length = binary.body(document, chunks)
    return Response(content, media_type="application/octet-stream", headers={binary.HEADER: str(length)})

  endpoint, unauthenticated = service.endpoint, dict(auth=False)
  model = "/v2/models/{name}"
  version = model + "/versions/{version}"
  return [Route("/v2", endpoint(server_metadata, model_scoped=False)),
          Route("/v2/health/live", endpoint(live, **unauthenticated)),
          Route("/v2/health/ready", endpoint(ready, **unauthenticated)),
          *[Route(base, endpoint(model_metadata)) for base in (model, version)],
          *[Route(base + "/ready", endpoint(model_ready)) for base in (model, version)],
          *[Route(base + "/infer", endpoint(infer), methods=["POST"]) for base in (model, version)]]
