"""The benchmark script runs end to end on tiny sizes (numbers are not checked: timing is not a test)."""

from tests import helpers


def test_checkpoint_benchmark_quick(tmp_path):
  out = tmp_path / "checkpoint.md"
  done = helpers.run_script("benchmark.py", "checkpoint", "--quick", "--out", str(out), devices=1)
  assert done.returncode == 0, done.stderr[-2000:]
  text = out.read_text()
  for row in ("loop blocked by `save`", "save, until complete", "restore onto device", "raw `numpy.save`"):
    assert row in text
  assert "x step" in text and "MB/s" in text
