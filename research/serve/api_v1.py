"""The simple JSON API.

    GET  /v1/models                                   models, versions, signatures, label names, load failures
    POST /v1/models/{name}[/versions/{v}]:predict     {"instances": [...]} raw inputs -> predictions

An instance is one raw example (pixels 0-255 as nested lists, or a text) for a model of one input, or an
object {input name: value} for a model of several.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from research.serve.jsonio import JSONResponse


def routes(service) -> list[Route]:
  from research.serve.app import HTTPError

  repo = service.repo

  async def list_models(request: Request) -> Response:
    return JSONResponse({"models": [
        {"name": name, "versions": sorted(versions), "signature": versions[max(versions)].predictor.signature,
         "labels": versions[max(versions)].predictor.label_names} for name, versions in sorted(repo.models.items())
        if versions], "failures": repo.failures})

  async def predict(request: Request) -> Response:
    entry = service.version_of(request)
    document = await service.body_json(request)
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
    outputs = await service.infer(request, entry, entry.predictor.check(raw))
    names = entry.predictor.label_names
    if "probabilities" not in outputs:
      return JSONResponse({"model": entry.name, "version": entry.version,
                           "outputs": {k: v.tolist() for k, v in outputs.items()}})
    return JSONResponse({"model": entry.name, "version": entry.version, "predictions": [
        {"class": int(c), "label": names[c] if names else str(c), "probabilities": p.tolist()}
        for c, p in zip(outputs["predictions"], outputs["probabilities"])]})

  endpoint = service.endpoint
  return [Route("/v1/models", endpoint(list_models, model_scoped=False)),
          Route("/v1/models/{name}:predict", endpoint(predict), methods=["POST"]),
          Route("/v1/models/{name}/versions/{version}:predict", endpoint(predict), methods=["POST"])]
