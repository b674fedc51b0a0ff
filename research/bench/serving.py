"""Serving: the HTTP server's requests/s and latency against in-process onnxruntime and peer servers, in one run.

Two exports of tiny trained runs (configs/mnist_cnn.py:smoke and configs/rotten_tomatoes_transformer.py:smoke;
the model's speed is not the point, the server's overhead and batching are) are served by:

- scripts/serve.py with batching as shipped (`--max_wait_ms 2`, 64 rows), with `--max_wait_ms 0` (no waiting,
  but requests that queued while the model ran are still merged), with `--max_batch_size 1` (no batching), and
  as shipped on the JAX backend (`--backend jax`: the StableHLO export on jax's default device, a GPU where
  there is one);
- peer servers installed from PyPI into their own virtualenvs (research/bench/servers.py), the same ONNX file
  in onnxruntime, their own batching on at the same size and wait;

each called by research/bench/loadgen.py (asyncio, keep-alive, a separate process) at concurrency 1, 16 and
64, one example per request, closed loop, over the Open Inference Protocol: JSON tensors, and (the server as
shipped) binary tensors. A GPT (configs/shakespeare_gpt.py:smoke) is served for generation at 1 and 16
concurrent streams. The limit is the same export called in-process at batch 1, 16
and 64: the ONNX model in onnxruntime alone, the server's own model call (preprocessing, onnxruntime, softmax),
both with the server's onnxruntime threads (`--model_threads`, its default), and that call on the JAX backend
(every bucket compiled first). Systems are
interleaved at each concurrency, so a slow moment of the machine hits them alike; the table gives the median
over repeats. The library's server takes raw inputs (pixels 0-255, text) and preprocesses them; peers get the
ONNX model's inputs (normalized floats, token ids), so they do less work per request.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from research.bench import servers
from research.bench.timing import machine, table

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"mnist_cnn": "configs/mnist_cnn.py:smoke",
          "rotten_tomatoes_transformer": "configs/rotten_tomatoes_transformer.py:smoke"}
CONCURRENCY = (1, 16, 64)
MAX_BATCH, MAX_WAIT_MS = 64, 2.0  # the server's defaults; peers get the same
# label: scripts/serve.py flags. The first is the server as shipped, which the targets judge.
SETTINGS = {f"batching ({MAX_WAIT_MS:g} ms)": ["--max_wait_ms", str(MAX_WAIT_MS)],
            "batching (0 ms wait)": ["--max_wait_ms", "0"],
            "off (1 row per call)": ["--max_batch_size", "1"],
            f"batching ({MAX_WAIT_MS:g} ms), JAX backend": ["--max_wait_ms", str(MAX_WAIT_MS), "--backend", "jax"]}
SHIPPED, NO_WAIT, OFF, _ = SETTINGS  # (the fourth, the JAX backend, is judged by no target)
TEXT = "a quietly moving film, beautifully acted and never sentimental"
SETTLE_S = 0.3  # a pause before each point, where peers run: their workers may poll on after their load stops
GPT, STREAMS, GEN_TOKENS = "configs/shakespeare_gpt.py:smoke", (1, 16), 64


def _export(name: str, config: str, tmp: Path) -> Path:
  """A tiny trained run of `config`, exported to ONNX."""
  from research import config as config_lib
  from research.export import export
  from research.train.loop import train

  workdir = tmp / name / "run"
  train(config_lib.load(str(ROOT / config)), workdir)
  return export(workdir, formats=("onnx", "stablehlo"), out=tmp / name / "export", batch_sizes=(1,),
                accuracy_examples=64, log=lambda _: None)


def _examples(predictor) -> tuple[dict, dict]:
  """(one raw example as the server takes it, the ONNX model's inputs for it as peers take them)."""
  raw = {}
  for name, spec in predictor.signature.items():
    if spec["dtype"] == "str":
      raw[name] = np.array([TEXT], dtype=object)
    else:
      raw[name] = np.random.default_rng(0).integers(0, 256, [1, *spec["shape"][1:]]).astype(spec["dtype"])
  batch = predictor.preprocess(predictor.check(raw))
  return raw, {i["name"]: np.asarray(batch[i["name"]], dtype=i["dtype"]) for i in predictor.manifest["inputs"]}


def _dtype(array: np.ndarray) -> str:
  return "str" if array.dtype == object else str(array.dtype)  # texts are object arrays of str


def oip_json(arrays: dict[str, np.ndarray]) -> bytes:
  """An Open Inference Protocol JSON request of these tensors."""
  from research.serve.oip import datatype

  return json.dumps({"inputs": [{"name": n, "shape": list(a.shape), "datatype": datatype(_dtype(a)),
                                 "data": a.reshape(-1).tolist()} for n, a in arrays.items()]}).encode()


def oip_binary(arrays: dict[str, np.ndarray]) -> tuple[bytes, dict]:
  """The same request with binary tensors in and out (the Open Inference Protocol's binary extension, as
  tritonclient sends it by default): (body, headers)."""
  from research.serve import binary
  from research.serve.oip import datatype

  chunks = [binary.encode(a) for a in arrays.values()]
  document = {"inputs": [{"name": n, "shape": list(a.shape), "datatype": datatype(_dtype(a)),
                          "parameters": {"binary_data_size": len(c)}} for (n, a), c in zip(arrays.items(), chunks)],
              "parameters": {"binary_data_output": True}}
  body, length = binary.body(document, chunks)
  return body, {"Content-Type": "application/octet-stream", binary.HEADER: str(length)}


def _in_process(entry, jax_entry, raw: dict, model_inputs: dict, repeats: int, budget_s: float) -> dict:
  """{(system, batch): {"p50_ms", "rows_per_s"}} of in-process calls at each batch size of CONCURRENCY, medians over
  `repeats` interleaved rounds of `budget_s` each. `jax_entry`: the model on the JAX backend, buckets compiled."""
  tile = lambda arrays, b: {k: np.repeat(v, b, 0) for k, v in arrays.items()}  # b copies of the row
  calls = {"onnxruntime (model only)": lambda b: entry.predictor.run(*tile(model_inputs, b).values()),
           "the server's model call": lambda b: entry.run(tile(raw, b)),
           "the server's model call, JAX backend": lambda b: jax_entry.run(tile(raw, b))}
  found: dict = {}
  for _ in range(repeats):
    for b in CONCURRENCY:
      for system, call in calls.items():
        for _ in range(3):
          call(b)
        times, deadline = [], time.perf_counter() + budget_s
        while len(times) < 5 or time.perf_counter() < deadline:
          start = time.perf_counter()
          call(b)
          times.append(time.perf_counter() - start)
        found.setdefault((system, b), []).append({"p50_ms": statistics.median(times) * 1e3,
                                                  "rows_per_s": b * len(times) / sum(times)})
  return {key: {k: statistics.median(r[k] for r in runs) for k in ("p50_ms", "rows_per_s")}
          for key, runs in found.items()}


def load(url: str, body: bytes, concurrency: int, warmup_s: float, duration_s: float, headers: dict | None = None):
  """research/bench/loadgen.py's result for closed-loop POSTs of `body` to `url` (a separate process)."""
  spec = {"url": url, "body": body.decode("latin-1"), "headers": headers or {}, "concurrency": concurrency,
          "warmup_s": warmup_s, "duration_s": duration_s}
  done = subprocess.run([sys.executable, str(Path(__file__).with_name("loadgen.py"))], input=json.dumps(spec),
                        capture_output=True, text=True, check=False, timeout=warmup_s + duration_s + 120)
  if done.returncode:
    raise RuntimeError(f"the load generator failed: {done.stderr[-2000:]}")
  result = json.loads(done.stdout)
  if result["errors"]:
    raise RuntimeError(f"{result['errors']} requests to {url} failed, e.g.: {result['first_error']}")
  return result


def _peers(wanted, quick: bool, notes: list[str]) -> list[str]:
  """The peers to measure: installed now (a full run installs the missing ones; --quick skips them)."""
  ready = []
  for peer in wanted:
    if servers.python_of(peer) is None:
      if quick:
        notes.append(f"{peer}: not installed, skipped by --quick (a full run installs it into "
                     f"{servers.CACHE / peer}).")
        continue
      print(f"installing {peer} into {servers.CACHE / peer} ...", file=sys.stderr, flush=True)
      servers.install(peer)
    ready.append(peer)
  return ready


def _start(exports: dict, examples: dict, peers: list[str], tmp: Path) -> tuple[list, dict]:
  """(every server, all started and answering before any is measured; {(model, system, encoding): (server, url,
  body, headers)})."""
  from research.export.onnx import FILE

  running, calls = [], {}
  try:
    for label, flags in SETTINGS.items():
      server = servers.research(exports, flags, "research")
      running.append(server)
      for m, (raw, _) in examples.items():
        url = f"{server.url}/v2/models/{m}/infer"
        calls[(m, f"research, {label}", "json")] = (server, url, oip_json(raw), None)
        if label == SHIPPED:
          calls[(m, f"research, {label}", "binary")] = (server, url, *oip_binary(raw))
    for peer in peers:
      for m, (_, model_inputs) in examples.items():
        onnx = exports[m] / FILE
        server = (servers.litserve(onnx, MAX_BATCH, MAX_WAIT_MS) if peer == "litserve" else
                  servers.mlserver(m, onnx, MAX_BATCH, MAX_WAIT_MS, tmp))
        running.append(server)
        body = oip_json(model_inputs)
        calls[(m, f"{peer}, batching ({MAX_WAIT_MS:g} ms)", "json")] = (server, server.url, body, None)
    for server in running:  # all started at once, then waited for
      server.ready()
  except BaseException:
    for server in running:  # one that did not start: stop the others before reporting it
      server.stop()
    raise
  return running, calls


def _measure(calls: dict, repeats: int, warmup_s: float, duration_s: float, settle_s: float) -> dict:
  """{(model, system, encoding, concurrency): median requests/s, p50 ms, p99 ms and the server's CPU ms per
  request}, systems interleaved at each concurrency. CPU time per request is the steadier measure on a busy
  machine: time the server waits for a core counts in latency, not in CPU time."""
  results: dict = {}
  for repeat in range(repeats):
    for c in CONCURRENCY:
      order = list(calls.items())
      order = order[repeat % len(order):] + order[:repeat % len(order)]  # each round starts with another system
      for (m, system, encoding), (server, url, body, headers) in order:
        time.sleep(settle_s)
        cpu = server.cpu_seconds()
        result = load(url, body, c, warmup_s, duration_s, headers)
        result["cpu_ms"] = (server.cpu_seconds() - cpu) * 1e3 / result["all_requests"]
        results.setdefault((m, system, encoding, c), []).append(result)
  return {key: {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_ms", "p99_ms", "cpu_ms")}
          for key, runs in results.items()}


def _http_rows(m: str, measured: dict, calls: dict, skipped: dict[str, str]) -> list[list]:
  rows = []
  for c in CONCURRENCY:
    shipped = measured[(m, f"research, {SHIPPED}", "json", c)]["rps"]
    for model, system, encoding in calls:
      if model != m:
        continue
      r = measured[(m, system, encoding, c)]
      rows.append([c, system, encoding, f"{r['rps']:,.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                   f"{r['cpu_ms']:.2f}", f"{shipped / r['rps']:.2f}x"])
    rows += [[c, peer, "json", why, "", "", "", ""] for peer, why in skipped.items()]
  return rows


def _targets(m: str, measured: dict, limit: dict, peers: list[str]) -> list[list]:
  at = lambda system, c: measured[(m, system, "json", c)]
  shipped = f"research, {SHIPPED}"
  model_call = limit[("the server's model call", 1)]["p50_ms"]
  added = at(shipped, 1)["p50_ms"] - model_call
  no_wait = at(f"research, {NO_WAIT}", 1)["p50_ms"] - model_call
  speedup = at(shipped, 64)["rps"] / at(f"research, {OFF}", 64)["rps"]
  rows = [[m, "concurrency 1: p50 over the in-process model call < 1 ms",
           f"+{added:.2f} ms ({at(shipped, 1)['p50_ms']:.2f} vs {model_call:.2f}); with 0 ms wait +{no_wait:.2f} ms",
           "yes" if added < 1 else "no"],
          [m, "concurrency 64: batching >= 3x no batching", f"{speedup:.2f}x", "yes" if speedup >= 3 else "no"]]
  if peers:
    ratios = {(p, c): at(shipped, c)["rps"] / at(f"{p}, batching ({MAX_WAIT_MS:g} ms)", c)["rps"]
              for p in peers for c in CONCURRENCY}
    (peer, c), worst = min(ratios.items(), key=lambda kv: kv[1])
    rows.append([m, "ahead of every peer at every concurrency (requests/s)",
                 f"lowest {worst:.2f}x ({peer} at concurrency {c})", "yes" if worst > 1 else "no"])
  return rows


def _generation(export: Path | None, warmup_s: float, duration_s: float) -> list[list]:
  """GPT tokens/s over `POST /v1/models/gpt:generate` (whole answers of GEN_TOKENS tokens) at 1 and 16 streams."""
  if export is None:
    return [[streams, "not measured by --quick (a full run trains and serves a GPT)", "", ""] for streams in STREAMS]
  server = servers.research({"gpt": export}, [], "research").ready()
  body = json.dumps({"prompt": "ROMEO:", "max_tokens": GEN_TOKENS, "seed": 0}).encode()
  try:
    runs = {c: load(f"{server.url}/v1/models/gpt:generate", body, c, warmup_s, duration_s) for c in STREAMS}
  finally:
    server.stop()
  return [[c, f"{r['rps'] * GEN_TOKENS:,.0f}", f"{r['rps'] * GEN_TOKENS / c:,.0f}", f"{r['p50_ms']:.1f}"]
          for c, r in runs.items()]


def run(quick: bool = False, exports: dict[str, Path] | None = None, peers: tuple[str, ...] | None = None) -> str:
  """`exports` ({name: export dir}) replaces the trained MODELS (tests pass the test run's shared smoke export);
  `peers` picks among servers.PEERS (default all)."""
  repeats, warmup_s, duration_s, budget_s = (1, 0.1, 0.3, 0.2) if quick else (3, 0.5, 2.0, 0.5)
  load_before = os.getloadavg()[0]
  names = list(exports or MODELS)[:1 if quick else None]  # --quick: the CNN (each server and peer is still started)
  from research.serve.predictor import Predictor
  from research.serve.repository import Version
  from research.serve.server import default_model_threads

  notes: list[str] = []
  with tempfile.TemporaryDirectory(prefix="research-serving-bench-") as tmp:
    exports = {m: Path(exports[m]) if exports else _export(m, MODELS[m], Path(tmp)) for m in names}
    # the in-process limit runs onnxruntime as the server does (scripts/serve.py's default --model_threads)
    entries = {m: Version(m, 1, Predictor.load(exports[m], threads=default_model_threads()), None) for m in names}
    # the batch sizes measured are buckets of the server's (bucket_sizes(MAX_BATCH)): compiled alone, the same calls
    jax_entries = {m: Version(m, 1, Predictor.load(exports[m], backend="jax", buckets=CONCURRENCY), None)
                   for m in names}
    for entry in jax_entries.values():
      entry.predictor.warm_up()  # compiled before timing, as the server does before it answers
    examples = {m: _examples(entries[m].predictor) for m in names}
    peers = _peers(servers.PEERS if peers is None else peers, quick, notes)
    running, calls = _start(exports, examples, peers, Path(tmp))
    try:
      measured = _measure(calls, repeats, warmup_s, duration_s, SETTLE_S if peers else 0)
    finally:
      for server in running:
        server.stop()
    # the servers stopped: the in-process limit shares the cores with no one of this run
    limit = {m: _in_process(entries[m], jax_entries[m], *examples[m], repeats, budget_s) for m in names}
    generation = _generation(None if quick else _export("gpt", GPT, Path(tmp)), warmup_s, duration_s)
  skipped = {p: "left out of this run" if servers.python_of(p) else "not installed (--quick does not install peers)"
             for p in servers.PEERS if p not in peers}
  sections, targets = [], []
  for m in names:
    shape = ", ".join(f"{n}: {s['dtype']}[N, {', '.join(map(str, s['shape'][1:]))}]".replace("[N, ]", "[N]")
                      for n, s in entries[m].predictor.signature.items())
    in_process = [[b, system, f"{r['p50_ms']:.3f}", f"{r['rows_per_s']:,.0f}"] for (system, b), r in limit[m].items()]
    sections.append(f"### {m} ({MODELS.get(m, exports[m])}), raw input {shape}\n\n"
                    + table(["concurrency", "server", "encoding", "requests/s", "p50 ms", "p99 ms",
                             "server CPU ms per request", "research as shipped vs this (requests/s)"],
                            _http_rows(m, measured, calls, skipped))
                    + "\n\nIn-process, the same export (the limit):\n\n"
                    + table(["batch", "call", "p50 ms per call", "rows/s"], in_process))
    targets += _targets(m, measured, limit[m], peers)
  sections.append(f"### Generation ({GPT}, `POST /v1/models/gpt:generate`, {GEN_TOKENS} tokens per answer)\n\n"
                  + table(["streams", "tokens/s", "tokens/s per stream", "p50 ms per answer"], generation))
  versions = ", ".join(f"{p} ({(servers.CACHE / p / 'installed').read_text().split()[0]})" for p in peers)
  header = (f"One example per request, closed loop, keep-alive: research/bench/loadgen.py (asyncio) in its own "
            f"process; {warmup_s:g} s warm-up then {duration_s:g} s measured per point, median of {repeats} "
            f"interleaved repeat(s). Server, peers and load generator share this machine's cores, so at high "
            f"concurrency the client takes CPU time the server would otherwise have. Batching: at most {MAX_BATCH} "
            f"rows per model call, waiting at most {MAX_WAIT_MS:g} ms (peers configured alike). Peers: "
            f"{versions or 'none'}; they take the ONNX model's inputs, the library's server raw inputs. The library's "
            f"server and the in-process calls run onnxruntime on {default_model_threads()} thread(s) per call "
            f"(`--model_threads`, its default here), peers with onnxruntime's own default. The JAX backend rows run the "
            f"StableHLO export on jax's device (the Machine line), each batch padded to a bucket "
            f"(1, 2, 4, ... {MAX_BATCH} rows) compiled before the server answers.\n"
            f"Machine: {machine()}; load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
            f"(other jobs running when it is over the core count).\n\n"
            + table(["model", "target", "measured", "holds"], targets))
  return "\n\n".join([header, *notes, *sections])
