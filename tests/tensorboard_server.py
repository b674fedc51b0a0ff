"""The real TensorBoard server on a loopback port, and its HParams plugin's HTTP API, for tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

from tests import helpers

STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def get_json(url: str, body: dict | None = None):
  """GET `url`, or POST `body` as JSON (the hparams plugin's endpoints take POSTed requests)."""
  data = None if body is None else json.dumps(body).encode()
  request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
  with urllib.request.urlopen(request, timeout=30) as response:
    return json.loads(response.read())


@contextlib.contextmanager
def serve(logdir, timeout: float = 90) -> Iterator[str]:
  """`tensorboard --logdir LOGDIR` (its default, fast loader) on a free port; yields its base URL once it answers."""
  port = helpers.free_port()
  server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
                             "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=helpers.env_without_tensorflow())
  base = f"http://127.0.0.1:{port}"
  try:
    deadline = time.time() + timeout
    while True:
      try:
        get_json(f"{base}/data/logdir")
        break
      except OSError:
        if time.time() > deadline or server.poll() is not None:
          raise AssertionError(f"TensorBoard never answered on port {port}") from None
        time.sleep(0.2)
    yield base
  finally:
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


def session_groups(base: str, expected: int, timeout: float = 60) -> list[dict]:
  """The HParams table's rows (/data/plugin/hparams/session_groups), once the server has loaded `expected` runs
  with their metrics (it reads event files in the background)."""
  request = {"experimentName": "", "allowedStatuses": STATUSES, "colParams": [], "startIndex": 0, "sliceSize": 100}
  deadline, groups = time.time() + timeout, []
  while time.time() < deadline:
    groups = get_json(f"{base}/data/plugin/hparams/session_groups", request).get("sessionGroups", [])
    if len(groups) >= expected and all(g.get("metricValues") for g in groups):
      return groups
    time.sleep(0.2)
  raise AssertionError(f"the HParams API listed {len(groups)} session groups, not {expected}: {groups}")


def experiment(base: str) -> dict:
  """The HParams columns (/data/plugin/hparams/experiment): hparamInfos and metricInfos."""
  return get_json(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})


def metric_values(group: dict) -> dict[str, float]:
  """A session group's metrics as {tag: value}."""
  return {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
