"""The metric writer: files read back, and a start-up that does not pay for PyTorch."""

import json
import subprocess
import sys

from tests import helpers

# A stand-in `torch` package that records being imported; the check runs in a fresh interpreter.
CHECK_TORCH_NOT_IMPORTED = """
import pathlib, sys
from research.logging import MetricWriter
pathlib.Path(sys.argv[1]).mkdir()
writer = MetricWriter(sys.argv[1])
writer.scalars(3, {"train/loss": 0.5})
writer.close()
print("imported before:", "torch" in sys.modules)
import torch
print("imported after:", torch.MARK)
"""


def test_metric_writer_does_not_import_torch_but_leaves_it_importable(tmp_path):
  fake = tmp_path / "site" / "torch"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text("MARK = 'fake torch'\n")
  env = helpers.env_with_devices(1)
  env["PYTHONPATH"] = f"{tmp_path / 'site'}:{helpers.ROOT}"
  done = subprocess.run([sys.executable, "-c", CHECK_TORCH_NOT_IMPORTED, str(tmp_path / "run")], env=env,
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.splitlines() == ["imported before: False", "imported after: fake torch"]
  rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
  assert rows == [{"step": 3, "train/loss": 0.5}]
  assert list((tmp_path / "run/tensorboard").glob("events.out.tfevents.*"))
