"""An HTTP load generator for the serving benchmark: N keep-alive connections, each sending one request after another.

    echo '{"url": "http://127.0.0.1:8000/v2/models/m/infer", "body": "...", "concurrency": 16,
           "warmup_s": 1, "duration_s": 5}' | python research/bench/loadgen.py

It runs in its own process (the server's Python never shares a core's time slice with it inside one interpreter),
on asyncio streams with uvloop when installed, and parses only what HTTP/1.1 keep-alive needs (status line,
Content-Length or chunked bodies): a few microseconds per request, so the server stays the bottleneck. Prints one
JSON object: requests (measured; all_requests counts the warm-up's too), errors (non-200 answers, with the first
one's body), seconds, requests/s, p50/p99 ms.
Only the standard library (and uvloop if present): peers' virtualenvs and the project's environment both run it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
  head = await reader.readuntil(b"\r\n\r\n")
  lines = head.decode("latin-1").split("\r\n")
  status = int(lines[0].split(" ", 2)[1])
  headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
  if "content-length" in headers:
    return status, await reader.readexactly(int(headers["content-length"]))
  if headers.get("transfer-encoding", "").lower() == "chunked":
    body = bytearray()
    while True:
      size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
      body += await reader.readexactly(size + 2)
      if size == 0:
        return status, bytes(body)
  raise ValueError(f"a response without Content-Length or chunked encoding: {head[:200]!r}")


async def _client(url, request: bytes, until: float, record_from: float, latencies: list, errors: list,
                  total: list) -> None:
  reader, writer = await asyncio.open_connection(url.hostname, url.port)
  try:
    while True:
      start = time.perf_counter()
      if start >= until:
        return
      writer.write(request)
      status, body = await _read_response(reader)
      total[0] += 1
      if start >= record_from:
        (latencies if status == 200 else errors).append(time.perf_counter() - start if status == 200 else body)
  finally:
    writer.close()


async def run(spec: dict) -> dict:
  url = urlsplit(spec["url"])
  body = spec["body"].encode("latin-1")  # any bytes, carried in JSON as latin-1 text
  headers = {"Host": url.netloc, "Content-Type": "application/json", "Content-Length": str(len(body)),
             **spec.get("headers", {})}
  request = (f"POST {url.path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
             + "\r\n").encode("latin-1") + body
  now = time.perf_counter()
  record_from = now + spec["warmup_s"]
  until = record_from + spec["duration_s"]
  latencies, errors, total = [], [], [0]
  await asyncio.gather(*[_client(url, request, until, record_from, latencies, errors, total)
                         for _ in range(spec["concurrency"])])
  seconds = time.perf_counter() - record_from
  ms = sorted(t * 1e3 for t in latencies)
  pick = lambda q: ms[min(int(q * len(ms)), len(ms) - 1)] if ms else float("nan")
  return {"requests": len(ms), "all_requests": total[0], "errors": len(errors),
          "first_error": errors[0][:300].decode("latin-1") if errors else "", "seconds": seconds,
          "rps": len(ms) / seconds, "p50_ms": pick(0.5), "p99_ms": pick(0.99)}


def main() -> None:
  spec = json.load(sys.stdin)
  try:
    import uvloop
  except ImportError:
    uvloop = asyncio
  print(json.dumps(uvloop.run(run(spec))))


if __name__ == "__main__":
  main()
