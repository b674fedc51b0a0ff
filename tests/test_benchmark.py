"""The benchmark script runs end to end on tiny sizes (numbers are not checked: timing is not a test)."""

import pytest

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
  assert systems["hand_jax"].split("|")[4].strip() == "1.00x"
  assert systems["trainer"].split("|")[4].strip().endswith("x")  # the library's trainer always runs, with a ratio
  for model in ("cnn", "transformer"):  # every architecture of the performance issue is measured
    assert any(line.startswith(f"| {model} | trainer |") for line in out.read_text().splitlines())


def test_cpu_benchmark_quick(tmp_path):
  out = tmp_path / "cpu.md"
  done = helpers.run_script("benchmark.py", "cpu", "--quick", "--out", str(out), devices=1, timeout=900)
  assert done.returncode == 0, done.stderr[-2000:]
  rows = [line.split("|") for line in out.read_text().splitlines() if line.startswith("| default")
          or line.startswith("| malloc as glibc sets it")]
  assert len(rows) == 2, rows
  for column in (4, 6, 8):  # cnn train, transformer train, transformer forward: each measured against the default
    assert rows[0][column].strip() == "1.00x" and rows[1][column].strip().endswith("x"), rows


def test_pipeline_benchmark_quick(tmp_path):
  """Two real short runs of mnist_mlp: data wait, supply vs consumption and cold/cached first step, all filled."""
  out = tmp_path / "pipeline.md"
  done = helpers.run_script("benchmark.py", "pipeline", "--quick", "--out", str(out), devices=1, timeout=900)
  assert done.returncode == 0, done.stderr[-2000:]
  row = next(line.split("|") for line in out.read_text().splitlines() if line.startswith("| mnist_mlp |"))
  wait, consumed, supplied, ratio, built, cold, warm = (c.strip() for c in row[2:9])
  assert float(built) > 0  # normalizing and flattening 60,000 images once takes measurable time
  assert wait.endswith("%") and 0 <= float(wait[:-1]) <= 100
  number = lambda cell: float(cell.replace(",", ""))
  assert number(supplied) > 0 and number(ratio[:-1]) == pytest.approx(number(supplied) / number(consumed), abs=0.06)
  assert float(warm) < float(cold)  # the compilation cache was written by the first run and read by the second
