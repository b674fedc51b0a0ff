"""Text generation over HTTP, whole or streamed as server-sent events; concurrent requests share decode steps.

    POST /v1/models/{name}[/versions/{v}]:generate
      {"prompt": "ROMEO:", "max_tokens": 200, "temperature": 1.0, "top_k": 0, "seed": 0, "stream": false}
      -> {"model", "version", "text", "tokens"}                       ("tokens": how many were generated)
      "stream": true -> text/event-stream, one event per decoded piece, then one that says it is done:
      data: {"text": "..."}
      data: {"done": true, "model": "...", "version": 1, "tokens": 200}

Only `prompt` is required; the defaults are scripts/generate.py's. A stream that fails after it started ends
with `data: {"error": "..."}`. Each served version's streams go through its Scheduler (research/serve/streams.py),
warmed up (every batch size compiled) before the version is served: at most `max_streams` at a time, past that
a request gets 503 with Retry-After. A whole answer has --timeout_s
(504); a stream runs until it is done or its client goes away, which frees its row at the next step.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter, Gauge, Histogram
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from research.errors import InputError
from research.serve.generate import check_request, short_repr
from research.serve.jsonio import JSONResponse, dumps
from research.serve.streams import Scheduler, StreamsFull

log = logging.getLogger("research.serve")
DEFAULTS = {"prompt": None, "max_tokens": 200, "temperature": 1.0, "top_k": 0, "seed": 0, "stream": False}


def read_request(document: dict) -> dict:
  """The request's fields with their defaults, checked; InputError names the first bad one."""
  unknown = sorted(set(document) - set(DEFAULTS))
  if unknown:
    raise InputError(f"unknown field {unknown[0]!r}; a request takes {', '.join(DEFAULTS)}.")
  fields = {**DEFAULTS, **document}
  check_request(fields["prompt"], fields["max_tokens"], fields["temperature"], fields["top_k"], fields["seed"])
  if not isinstance(fields["stream"], bool):
    raise InputError(f"stream must be true or false, got {short_repr(fields['stream'])}.")
  return fields


def _event(data: dict) -> str:
  return f"data: {dumps(data).decode()}\n\n"


def routes(service, max_streams: int = 16) -> list[Route]:
  from research.serve.app import HTTPError

  registry = service.metrics.registry
  step_rows = Histogram("research_decode_rows", "Streams advanced together by each decode step.", ["model"],
                        registry=registry, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
  open_streams = Gauge("research_streams", "Generation streams open.", ["model", "version"], registry=registry)
  tokens = Counter("research_generated_tokens", "Tokens generated.", ["model"], registry=registry)

  def scheduler_of(entry) -> Scheduler:
    generator = entry.generator
    if generator is None:
      raise HTTPError(400, f"model {entry.name!r} does not generate text (its export has no generation section); "
                           f":generate serves language models such as configs/shakespeare_gpt.py")
    if generator.scheduler is None:  # lives as long as the version is served
      generator.scheduler = Scheduler(generator, max_streams, on_step=step_rows.labels(entry.name).observe,
                                      on_tokens=tokens.labels(entry.name).inc,
                                      on_streams=open_streams.labels(entry.name, str(entry.version)).set)
    return generator.scheduler

  def warm_up(entry) -> None:  # each version that generates, before it is served (those loaded later too)
    if entry.generator is not None:
      try:
        scheduler_of(entry).warm_up()
      except Exception:  # a size not compiled now compiles on first use; the version is served all the same
        log.exception("generation warm-up of %s version %s failed", entry.name, entry.version)

  service.repo.on_serve(warm_up)

  async def generate(request: Request) -> Response:
    entry = service.version_of(request)
    scheduler = scheduler_of(entry)
    fields = read_request(await service.body_json(request))
    request.state.rows = 1
    try:
      stream = scheduler.open(fields["prompt"], fields["max_tokens"], temperature=fields["temperature"],
                              top_k=fields["top_k"], seed=fields["seed"])
    except StreamsFull as e:
      raise HTTPError(503, f"the server is busy: {e}; retry, or start it with a larger --max_streams",
                      {"Retry-After": "1"}) from None
    head, pieces = {"model": entry.name, "version": entry.version}, aiter(stream)
    try:  # the whole text, or the first piece of a stream: the request's latency runs to it
      first = await asyncio.wait_for(anext(pieces, None) if fields["stream"] else _join(pieces), service.timeout_s)
    except BaseException as e:  # a timeout, a failed step, or the request cancelled: the row is freed
      stream.close()
      if isinstance(e, TimeoutError):
        raise HTTPError(504, f"the model did not answer within {service.timeout_s:g} s") from None
      raise
    if not fields["stream"]:
      return JSONResponse({**head, "text": first, "tokens": stream.drawn})

    async def events():
      try:
        if first is not None:
          yield _event({"text": first})
        async for piece in pieces:
          yield _event({"text": piece})
        yield _event({"done": True, **head, "tokens": stream.drawn})
      except RuntimeError as e:  # the scheduler failed (and logged why) after the status line went out
        yield _event({"error": str(e)})
      finally:  # also when the client went away (the response is cancelled): its row is freed
        stream.close()

    # The background task closes it too if the client went away before the first event was sent.
    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
                             background=BackgroundTask(stream.close))

  endpoint = service.endpoint(generate)
  return [Route("/v1/models/{name}:generate", endpoint, methods=["POST"]),
          Route("/v1/models/{name}/versions/{version}:generate", endpoint, methods=["POST"])]


async def _join(pieces) -> str:
  return "".join([piece async for piece in pieces])
