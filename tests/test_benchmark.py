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


def test_train_benchmark_quick(tmp_path):
  out = tmp_path / "train.md"
  done = helpers.run_script("benchmark.py", "train", "--quick", "--out", str(out), devices=1, timeout=900)
  assert done.returncode == 0, done.stderr[-2000:]
  rows = [line for line in out.read_text().splitlines() if line.startswith("| mlp |")]
  systems = {row.split("|")[2].strip(): row for row in rows}
  assert set(systems) == {"hand_jax", "trainer", "keras_jax", "torch_eager", "torch_compile"}
  assert "1.00x" in systems["hand_jax"]
  assert "x |" in systems["trainer"]  # the library's trainer always runs, with a ratio
