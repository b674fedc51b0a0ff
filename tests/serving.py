"""A real scripts/serve.py for tests: a subprocess on a free loopback port, called over HTTP."""

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request

from tests import helpers


def export_smoke(tmp_path_factory, config: str, formats: tuple[str, ...] = ("onnx",)):
  """An export of the test run's shared smoke run of `config` (tests/helpers.py), made in this module's temp dir."""
  from research.export import export

  return export(helpers.smoke_run(tmp_path_factory, config).workdir, formats=formats,
                out=tmp_path_factory.mktemp("served") / "export", batch_sizes=(1,), accuracy_examples=64,
                log=lambda _: None)


class Server:
  def __init__(self, *args: str):
    self.proc = subprocess.Popen([sys.executable, str(helpers.ROOT / "scripts/serve.py"), "--port", "0", *args],
                                 cwd=helpers.ROOT, env=helpers.env_with_devices(1), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    line = self.proc.stderr.readline()
    found = re.search(r"on (https?://[\d.]+:\d+)", line)
    if not found:
      self.proc.kill()
      raise AssertionError(f"the server did not start: {line}{self.proc.stderr.read()[-3000:]}")
    self.url = found.group(1)

  def call(self, path: str, body=None, key: str | None = None, raw: bytes | None = None) -> tuple[int, dict, dict]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(self.url + path, data, headers)
    try:
      with urllib.request.urlopen(request, timeout=60) as r:
        return r.status, dict(r.headers), json.loads(r.read() or b"null") if "json" in r.headers.get(
            "content-type", "") else r.read().decode()
    except urllib.error.HTTPError as e:
      return e.code, dict(e.headers), json.loads(e.read())

  def stop(self) -> tuple[int, str]:
    self.proc.send_signal(signal.SIGTERM)
    _, err = self.proc.communicate(timeout=60)
    return self.proc.returncode, err
