#!/usr/bin/env python
"""Screenshots of TensorBoard for the docs, taken by headless Chromium from a real `tensorboard --logdir`.

    python scripts/screenshots.py hparams --logdir runs/sweep --out docs/images/hparams_table.png
    python scripts/screenshots.py profile --logdir runs/mnist_cnn_profile --out docs/images/cnn_profile.png
    python scripts/screenshots.py images --logdir runs/mnist_cnn/explain --out docs/images/ig_misclassified.png

A development tool (docs/development.md, "Screenshots"), not run by the tests. It needs Debian's
`chromium` (`apt-get install chromium`) and, for the profile, the Profile tab's plugin (the `profile` extra)
in the environment whose Python runs this script: TensorBoard is started with that Python. It waits until
the server has loaded what the page shows (every run's HParams session, a profile run, an image), then lets
Chromium render the page and keeps the PNG small (a 256-colour palette).
"""

import argparse
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

# page: (TensorBoard's hash route, the data request that says the page has something to show, window size)
PAGES = {
    "hparams": ("hparams", "/data/plugin/hparams/session_groups", (1600, 640)),
    "profile": ("profile", "/data/plugin/profile/runs", (1600, 900)),
    "images": ("images", "/data/plugin/images/tags", (1600, 700)),
}
SESSION_GROUPS = {"experimentName": "", "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                  "STATUS_RUNNING"], "colParams": [], "startIndex": 0, "sliceSize": 100}


def fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def ready(base: str, path: str, expected: int) -> bool:
  """Whether the server answers `path` with at least `expected` entries (session groups with metrics, runs)."""
  body = json.dumps(SESSION_GROUPS).encode() if "hparams" in path else None
  request = urllib.request.Request(base + path, data=body, headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=10) as response:
      data = response.read()
      answer = json.loads(gzip.decompress(data) if response.headers.get("Content-Encoding") == "gzip" else data)
  except (OSError, ValueError):
    return False
  if isinstance(answer, dict) and "sessionGroups" in answer:  # hparams: the sessions with metrics
    answer = [g for g in answer["sessionGroups"] if g.get("metricValues")]
  elif isinstance(answer, dict):  # images: run -> its tags
    answer = [tag for tags in answer.values() for tag in tags]
  return len(answer) >= expected


def shoot(page: str, logdir: Path, out: Path, browser: str, wait: float) -> None:
  route, probe, (width, height) = PAGES[page]
  expected = len([p for p in logdir.glob("*/tensorboard")]) if page == "hparams" else 1
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
                             "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
  base = f"http://127.0.0.1:{port}"
  try:
    deadline = time.time() + 120
    while not ready(base, probe, max(expected, 1)):
      if time.time() > deadline or server.poll() is not None:
        fail(f"TensorBoard on {logdir} never showed {page} data at {probe} (is xprof installed for a profile?).")
      time.sleep(1)
    with tempfile.TemporaryDirectory() as profile_dir:
      shot = Path(profile_dir) / "shot.png"
      subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                      f"--user-data-dir={profile_dir}", f"--window-size={width},{height}",
                      f"--virtual-time-budget={int(wait * 1000)}", f"--screenshot={shot}",
                      f"{base}/?darkMode=false#{route}"], check=True, capture_output=True, timeout=180)
      from PIL import Image

      out.parent.mkdir(parents=True, exist_ok=True)
      with Image.open(shot) as image:
        image.convert("RGB").quantize(colors=256).save(out, optimize=True)
  finally:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)
  print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("page", choices=sorted(PAGES), help="which TensorBoard page to capture")
  parser.add_argument("--logdir", required=True, help="what TensorBoard shows: a sweep's --out, a workdir")
  parser.add_argument("--out", required=True, help="the PNG to write")
  parser.add_argument("--browser", default="chromium", help="the Chromium binary (default: chromium on PATH)")
  parser.add_argument("--wait", type=float, default=20, help="seconds of page time Chromium renders before the shot")
  args = parser.parse_args()
  browser = shutil.which(args.browser)
  if browser is None:
    fail(f"{args.browser} not found: install Debian's chromium (apt-get install chromium) or pass --browser.")
  if not Path(args.logdir).is_dir():
    fail(f"--logdir {args.logdir} does not exist.")
  shoot(args.page, Path(args.logdir), Path(args.out), browser, args.wait)


if __name__ == "__main__":
  main()
