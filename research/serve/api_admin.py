"""Triton's model repository extension: what the repository holds, and loading or unloading a model. Each route
needs a key made with `--key_admin` (403 otherwise).

    POST /v2/repository/index                    [{"name", "version", "state": "READY" | "UNAVAILABLE", "reason"}]
                                                 ({"ready": true} in the body: only the served ones)
    POST /v2/repository/models/{name}/load       reads DIR/<name>/ now and serves what the version policy picks,
                                                 failed versions tried again; 200 once one serves, else 400
    POST /v2/repository/models/{name}/unload     stops serving every version; polls leave it unloaded until a load

Loading runs in a worker thread: requests to other models (and to the versions being replaced) go on meanwhile.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from research.serve.jsonio import JSONResponse


def routes(service) -> list[Route]:
  from research.serve.app import HTTPError, parse_json_object

  repo = service.repo

  async def document(request: Request, fields: set[str], parameters: set[str] = frozenset()) -> dict:
    """The JSON body ({} if empty); a field not in `fields`, or a key of its "parameters" not in `parameters`, is a
    400 (Triton's clients send "parameters": unload_dependents with every unload, config or files with a load)."""
    body = await service.body(request)
    found = parse_json_object(body) if body.strip() else {}
    unknown = sorted(set(found) - fields)
    if unknown:
      raise HTTPError(400, f"unknown field {unknown[0]!r}; this request takes {', '.join(sorted(fields))}")
    given = found.get("parameters", {})
    if not isinstance(given, dict):
      raise HTTPError(400, f"parameters must be an object, not {type(given).__name__}")
    unknown = sorted(set(given) - parameters)
    if unknown:
      raise HTTPError(400, f"parameter {unknown[0]!r} is not supported: a model's settings come from its export "
                      f"directory")
    return found

  def known(name: str) -> None:
    if name not in repo.names():
      raise HTTPError(404, f"no model {name!r} in the repository; it holds: {', '.join(repo.names()) or 'none'}")

  async def index(request: Request) -> Response:
    ready = (await document(request, {"ready"})).get("ready", False)
    if not isinstance(ready, bool):
      raise HTTPError(400, f"ready must be true or false, not {ready!r}")
    rows = await asyncio.to_thread(repo.index)
    return JSONResponse([row for row in rows if row["state"] == "READY" or not ready])

  async def load(request: Request) -> Response:
    name = request.path_params["name"]
    await document(request, {"parameters"})
    known(name)
    served = await asyncio.to_thread(repo.sync, name, True)
    failures = {k: v for k, v in repo.failures.items() if k.startswith(f"{name}/")}
    if not served:
      reasons = "; ".join(f"{k}: {v}" for k, v in failures.items()) or "it holds no <version>/ export"
      raise HTTPError(400, f"model {name!r} could not be loaded: {reasons}")
    return JSONResponse({"name": name, "versions": sorted(served), "failures": failures})

  async def unload(request: Request) -> Response:
    name = request.path_params["name"]
    await document(request, {"parameters"}, {"unload_dependents"})  # no ensembles here: nothing depends on a model
    known(name)
    return JSONResponse({"name": name, "unloaded": await asyncio.to_thread(repo.unload, name)})

  endpoint = service.endpoint
  return [Route("/v2/repository/index", endpoint(index, model_scoped=False, admin=True), methods=["POST"]),
          Route("/v2/repository/models/{name}/load", endpoint(load, admin=True), methods=["POST"]),
          Route("/v2/repository/models/{name}/unload", endpoint(unload, admin=True), methods=["POST"])]
