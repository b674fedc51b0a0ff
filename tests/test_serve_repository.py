"""The model repository, for real: scripts/serve.py over a DIR/<name>/<version>/ tree that changes while it serves.

Two exports of the test run's shared smoke MLP, from its checkpoints at steps 10 and 20 (one signature, other
answers), are the versions copied in and out. Versions go in the way docs/serving.md tells users: copied
under a name that is not a number, then renamed. The JAX backend's batch buckets are counted with JAX's own
compile events.
"""

import concurrent.futures
import os
import re
import shutil
import threading
import time

import numpy as np
import pytest

from tests import helpers
from tests.serving import Server

pytest.importorskip("starlette", reason="the `serve` extra is not installed: pip install -e '.[serve]'")
pytest.importorskip("onnxruntime", reason="the `onnx` extra is not installed: pip install -e '.[onnx]'")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  from research.export import export

  run, out = helpers.smoke_run(tmp_path_factory, "mnist_mlp"), tmp_path_factory.mktemp("versions")
  return {name: export(run.workdir, step=step, formats=("onnx", "stablehlo"), out=out / name, batch_sizes=(1,),
                       accuracy_examples=64, log=lambda _: None) for name, step in (("old", 10), ("new", 20))}


@pytest.fixture(scope="module")
def digits():
  from research.data import sources

  return sources.get_split("mnist", "test")["image"][:16]


def _offline(export_dir, pixels) -> np.ndarray:
  from research.serve import Predictor

  return Predictor.load(export_dir).predict({"image": pixels})["probabilities"]


def _install(source, model_dir, version: int, tamper: bool = False):
  """Copies an export in as a new version atomically: under a name that is not a number, then renamed."""
  staging = model_dir / f".{version}.tmp"
  shutil.copytree(source, staging)
  if tamper:
    with open(staging / "model.onnx", "ab") as f:
      f.write(b"\0")
  os.rename(staging, model_dir / str(version))


def _wait_for(condition, what: str, timeout: float = 90):
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.1)


def _served(server, key=None) -> tuple[list[int], dict]:
  body = server.call("/v1/models", key=key)[2]
  return next((m["versions"] for m in body["models"] if m["name"] == "mnist"), []), body["failures"]


def test_hot_reload_under_load_drops_nothing_and_a_broken_version_leaves_the_old_one_serving(exports, digits,
                                                                                             tmp_path):
  model_dir = tmp_path / "models" / "mnist"
  model_dir.mkdir(parents=True)
  _install(exports["old"], model_dir, 1)
  want = {1: _offline(exports["old"], digits[:4]), 2: _offline(exports["new"], digits[:4])}
  assert np.abs(want[1] - want[2]).max() > 1e-3  # the two versions answer differently
  server = Server("--models", str(tmp_path / "models"), "--no_auth", "--poll_s", "0.2")
  answers, stop = [], threading.Event()  # (client, status, version, probabilities) of every call, in order

  def client(i: int) -> None:
    while not stop.is_set():
      status, _, body = server.call("/v1/models/mnist:predict", {"instances": digits[:4].tolist()})
      answers.append((i, status, body.get("version"), np.array([p["probabilities"] for p in body["predictions"]])
                      if status == 200 else body))

  try:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
      clients = [pool.submit(client, i) for i in range(4)]
      _wait_for(lambda: len(answers) >= 20, "answers from version 1")
      _install(exports["new"], model_dir, 2)
      _wait_for(lambda: sum(a[2] == 2 for a in answers) >= 40, "answers from version 2")
      stop.set()
      [c.result() for c in clients]
    assert all(status == 200 for _, status, _, _ in answers), [a for a in answers if a[1] != 200][:3]
    for _, _, version, probabilities in answers:
      np.testing.assert_allclose(probabilities, want[version], atol=1e-5)
    for i in range(4):  # each client switched once, and never back
      seen = [version for c, _, version, _ in answers if c == i]
      assert seen == sorted(seen) and seen[-1] == 2, seen
    assert _served(server) == ([2], {})  # latest:1 unloaded version 1

    _install(exports["new"], model_dir, 3, tamper=True)  # refused on reload: a changed file
    (model_dir / "4").mkdir()  # copied in place, not renamed: a poll sees it half-copied
    shutil.copy(exports["new"] / "manifest.json", model_dir / "4")
    _wait_for(lambda: "model.onnx: missing" in _served(server)[1].get("mnist/4", "") and "mnist/3" in
              _served(server)[1], "both failures")  # version 4 may first fail for want of its manifest
    versions, failures = _served(server)
    assert versions == [2] and "model.onnx: sha256 mismatch" in failures["mnist/3"]
    assert "model.onnx: missing" in failures["mnist/4"]
    status, _, body = server.call("/v1/models/mnist:predict", {"instances": digits[:4].tolist()})
    assert status == 200 and body["version"] == 2
    assert re.search(r"^research_load_failures 2\.0$", server.call("/metrics")[2], re.MULTILINE)

    shutil.copytree(exports["new"], model_dir / "4", dirs_exist_ok=True)  # the copy completes: tried again
    _wait_for(lambda: _served(server)[0] == [4], "version 4, once whole")
    assert list(_served(server)[1]) == ["mnist/3"]
    shutil.rmtree(model_dir / "4")  # removed: back to the newest version that loads
    _wait_for(lambda: _served(server)[0] == [2], "version 2 again")
    time.sleep(1)  # five more polls: the unchanged broken version is not tried again
  finally:
    stop.set()
    code, err = server.stop()
  assert code == 0 and "Traceback" not in err, err[-3000:]
  assert err.count("warning: mnist/3 is not served: ") == 1, err[-3000:]
  assert "serving mnist version 4" in err and "unloaded mnist version 4" in err


def test_version_policy_admin_load_and_unload_on_the_jax_backend(exports, digits, tmp_path):
  httpclient = pytest.importorskip("tritonclient.http", reason="the `test` extra is not installed")
  from tritonclient.utils import InferenceServerException

  from research.serve.auth import add_key

  keys, model_dir = tmp_path / "keys.json", tmp_path / "models" / "mnist"
  model_dir.mkdir(parents=True)
  for version, name in ((1, "old"), (2, "new")):
    _install(exports[name], model_dir, version)
  _install(exports["new"], model_dir, 3, tamper=True)

  admin, user = add_key(keys, "ops", ["*"], admin=True), add_key(keys, "app", ["*"])  # as --add_key does
  server = Server("--models", str(tmp_path / "models"), "--keys", str(keys), "--version_policy", "latest:2",
                  "--backend", "jax", "--max_batch_size", "8", "--poll_s", "0.2")
  predict = lambda path, rows: server.call(path, {"instances": digits[:rows].tolist()}, key=user)
  probabilities = lambda body: np.array([p["probabilities"] for p in body["predictions"]])
  try:
    versions, failures = _served(server, user)  # the tampered newest is refused; the two below it serve
    assert versions == [1, 2] and "sha256 mismatch" in failures["mnist/3"]
    for rows in (3, 13):  # 13 rows: over the largest bucket (8), run in chunks of it
      status, _, body = predict("/v1/models/mnist:predict", rows)
      assert status == 200 and body["version"] == 2
      np.testing.assert_allclose(probabilities(body), _offline(exports["new"], digits[:rows]), atol=1e-5)
    status, _, body = predict("/v1/models/mnist/versions/1:predict", 5)
    np.testing.assert_allclose(probabilities(body), _offline(exports["old"], digits[:5]), atol=1e-5)

    for path in ("/v2/repository/index", "/v2/repository/models/mnist/unload", "/v2/repository/models/mnist/load"):
      status, _, body = server.call(path, {}, key=user)
      assert status == 403 and "--key_admin" in body["error"], (path, body)
    status, _, index = server.call("/v2/repository/index", {}, key=admin)
    assert status == 200 and [(r["version"], r["state"]) for r in index] == [
        ("1", "READY"), ("2", "READY"), ("3", "UNAVAILABLE")] and "sha256 mismatch" in index[2]["reason"]
    assert [r["version"] for r in server.call("/v2/repository/index", {"ready": True}, key=admin)[2]] == ["1", "2"]

    triton, auth = httpclient.InferenceServerClient(server.url.partition("//")[2]), {"Authorization": f"Bearer {admin}"}
    triton.unload_model("mnist", headers=auth)  # Triton's own client (it sends parameters.unload_dependents)
    status, _, body = predict("/v1/models/mnist:predict", 1)
    assert status == 404 and "no model 'mnist'" in body["error"]
    assert {r["reason"] for r in triton.get_model_repository_index(headers=auth)} == {"unloaded by an admin"}

    shutil.copy(exports["new"] / "model.onnx", model_dir / "3")  # repaired, but polls leave the model unloaded
    time.sleep(1)
    assert predict("/v1/models/mnist:predict", 1)[0] == 404
    status, _, body = server.call("/v2/repository/models/mnist/load", raw=b"", key=admin)
    assert status == 200 and body == {"name": "mnist", "versions": [2, 3], "failures": {}}
    assert predict("/v1/models/mnist:predict", 1)[2]["version"] == 3
    with pytest.raises(InferenceServerException, match="'config' is not supported"):
      triton.load_model("mnist", config="{}", headers=auth)
    for path, document, code, words in [("/v2/repository/models/nope/load", {}, 404, "no model 'nope'"),
                                        ("/v2/repository/models/mnist/unload", {"parameters": 1}, 400, "an object"),
                                        ("/v2/repository/models/mnist/load", {"files": {}}, 400, "'files'"),
                                        ("/v2/repository/index", {"ready": "yes"}, 400, "true or false")]:
      status, _, body = server.call(path, document, key=admin)
      assert status == code and words in body["error"], (path, body)
    assert server.call("/v2/repository/models/mnist/unload", raw=b"", key=admin)[2] == {"name": "mnist",
                                                                                      "unloaded": [2, 3]}
  finally:
    code, err = server.stop()
  assert code == 0 and "Traceback" not in err and admin not in err and user not in err, err[-3000:]


def test_the_jax_backend_compiles_every_bucket_at_warm_up_and_never_again(exports, digits):
  import jax
  from jax._src.dispatch import BACKEND_COMPILE_EVENT

  from research.serve import Predictor
  from research.serve.predictor import bucket_sizes

  compiles = []
  listener = lambda event, seconds, **_: compiles.append(event) if event == BACKEND_COMPILE_EVENT else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    model = Predictor.load(exports["new"], "jax", bucket_sizes(8))
    assert model.buckets == (1, 2, 4, 8)
    before = len(compiles)
    model.warm_up()
    assert len(compiles) - before == 4  # one compile per bucket
    want = _offline(exports["new"], digits)
    for rows in (3, 5, 7, 1, 8, 13, 6):
      np.testing.assert_allclose(model.predict({"image": digits[:rows]})["probabilities"], want[:rows], atol=1e-5)
    assert len(compiles) - before == 4  # no batch size compiled again
    plain = Predictor.load(exports["new"], "jax")  # without buckets, each new batch size compiles
    before = len(compiles)
    for rows in (3, 5, 3):
      plain.predict({"image": digits[:rows]})
    assert len(compiles) - before == 2
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def test_version_policies_pick_the_versions_served(exports, tmp_path):
  from research.errors import ConfigError
  from research.serve import repository

  model_dir = tmp_path / "mnist"
  model_dir.mkdir()
  for version in (1, 2, 5):
    _install(exports["new"], model_dir, version)
  for text, served in [("latest:1", [5]), ("latest:2", [2, 5]), ("all", [1, 2, 5]), ("specific:1,2", [1, 2]),
                       ("specific:1,7", [1])]:
    repo = repository.load(str(tmp_path), [], {}, repository.Policy.parse(text))
    assert sorted(repo.models["mnist"]) == served and repo.get("mnist").version == max(served), text
  for text in ("latest:0", "latest", "newest", "specific:", "specific:a", "all:2"):
    with pytest.raises(ConfigError, match="--version_policy"):
      repository.Policy.parse(text)
  with pytest.raises(ConfigError, match="No model could be loaded"):
    repository.load(str(tmp_path), [], {}, repository.Policy.parse("specific:7"))


def test_a_tampered_model_alone_is_refused_at_start_in_one_line(exports, tmp_path):
  model_dir = tmp_path / "models" / "mnist"
  model_dir.mkdir(parents=True)
  _install(exports["new"], model_dir, 1, tamper=True)
  done = helpers.run_script("serve.py", "--models", str(tmp_path / "models"), "--no_auth", devices=1)
  assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
  assert "No model could be loaded: mnist/1: " in done.stderr and "sha256 mismatch" in done.stderr


def test_an_unloaded_version_answers_its_requests_in_flight_then_is_freed(exports, digits):
  import asyncio
  import gc
  import weakref

  from research.serve import repository

  async def scenario() -> tuple[np.ndarray, weakref.ref, list]:
    problems = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: problems.append(context["message"]))
    repo = repository.load(None, [f"mnist={exports['new']}"], {"max_batch_size": 8, "max_wait_ms": 50})
    entry = repo.get("mnist")
    in_flight = asyncio.ensure_future(entry.batcher.submit(entry.predictor.check({"image": digits[:3]})))
    await asyncio.sleep(0.01)  # queued: the batch waits 50 ms to fill
    assert repo.unload("mnist") == [1] and not repo.models
    answer = (await in_flight).outputs["probabilities"]
    freed = weakref.ref(entry.predictor)
    del entry, in_flight
    await asyncio.sleep(0.05)
    gc.collect()
    return answer, freed, problems

  answer, freed, problems = asyncio.run(scenario())
  np.testing.assert_allclose(answer, _offline(exports["new"], digits[:3]), atol=1e-6)
  assert freed() is None and problems == []  # its batcher's worker stopped: no task left pending
