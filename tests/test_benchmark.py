"""The benchmark script runs end to end on tiny sizes (numbers are not checked: timing is not a test)."""

import jax
import numpy as np
import pytest

from tests import helpers


def _quick(tmp_path, section: str) -> str:
  """The markdown table of `scripts/benchmark.py SECTION --quick`, run as a user runs it (one device)."""
  out = tmp_path / f"{section}.md"
  done = helpers.run_script("benchmark.py", section, "--quick", "--out", str(out), devices=1, timeout=900)
  assert done.returncode == 0, done.stderr[-2000:]
  return out.read_text()


def test_checkpoint_benchmark_quick(tmp_path):
  text = _quick(tmp_path, "checkpoint")
  for row in ("loop blocked by `save`", "save, until complete", "restore onto device", "raw `numpy.save`"):
    assert row in text
  assert "x step" in text and "MB/s" in text


@pytest.mark.parametrize("section, precision", [("train", "float32"), ("train_bf16", "bfloat16 mixed precision")])
def test_train_benchmark_quick(tmp_path, section, precision):
  text = _quick(tmp_path, section)
  assert f"Adam (PyTorch: fused Adam), {precision}" in text
  rows = {}
  for line in text.splitlines():
    if line.startswith(("| mlp |", "| cnn |", "| transformer |")):
      model, system, rate, vs_hand = (cell.strip() for cell in line.split("|")[1:5])
      rows.setdefault(model, {})[system] = (rate, vs_hand)
  # --quick: every system (every peer installed by the test extra) on the MLP
  assert set(rows) == {"mlp"}
  assert set(rows["mlp"]) == {"hand_jax", "trainer", "keras_jax", "torch_eager", "torch_compile"}
  assert rows["mlp"]["hand_jax"][1] == "1.00x" and float(rows["mlp"]["trainer"][1][:-1]) > 0
  assert float(rows["mlp"]["trainer"][0].replace(",", "")) > 0


def test_steps_benchmark_quick(tmp_path):
  """The trainer's jitted step and the hand-written one, alternating in one process: both timed, ratio consistent."""
  text = _quick(tmp_path, "steps")
  row = next(line.split("|") for line in text.splitlines() if line.startswith("| mlp |"))
  hand, trainer, ratio = (cell.strip() for cell in row[2:5])
  assert float(hand) > 0 and float(trainer) > 0
  assert float(ratio[:-1]) == pytest.approx(float(hand) / float(trainer), rel=0.02)


def test_cpu_benchmark_quick(tmp_path):
  text = _quick(tmp_path, "cpu")
  rows = [line.split("|") for line in text.splitlines() if line.startswith("| default")
          or line.startswith("| malloc as glibc sets it")]
  assert len(rows) == 2, rows
  for column in (4, 6):  # cnn train, transformer forward (--quick): each measured against the default
    assert rows[0][column].strip() == "1.00x" and rows[1][column].strip().endswith("x"), rows


def test_pipeline_benchmark_quick(tmp_path):
  """Two real short runs of mnist_mlp: data wait, supply vs consumption and cold/cached first step, all filled."""
  text = _quick(tmp_path, "pipeline")
  row = next(line.split("|") for line in text.splitlines() if line.startswith("| mnist_mlp |"))
  wait, consumed, supplied, ratio, built, cold, warm = (c.strip() for c in row[2:9])
  assert float(built) > 0  # normalizing and flattening 60,000 images once takes measurable time
  assert wait.endswith("%") and 0 <= float(wait[:-1]) <= 100
  number = lambda cell: float(cell.replace(",", ""))
  assert number(supplied) > 0 and number(ratio[:-1]) == pytest.approx(number(supplied) / number(consumed), abs=0.06)
  assert float(warm) < float(cold)  # the compilation cache was written by the first run and read by the second


def test_accelerator_benchmark_quick(tmp_path):
  """GPT and ResNet train steps in bfloat16; on a CPU the MFU columns are n/a (no known peak). The GPT's model
  FLOPs agree with XLA's count. (The peaks of device kinds: tests/test_throughput.py.)"""
  text = _quick(tmp_path, "accelerator")
  rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
          for line in text.splitlines() if line.startswith(("| gpt |", "| resnet |"))}
  assert set(rows) == {"gpt", "resnet"}
  assert rows["gpt"][1].endswith("tokens/s") and rows["resnet"][1].endswith("images/s")
  for cells in rows.values():
    assert float(cells[1].split()[0].replace(",", "")) > 0 and cells[3:5] == ["n/a", "n/a"]
    assert 0 < float(cells[6]) < 20  # a finite cross-entropy after the timed steps
  # 6N + 12LTd per token against XLA's count of the compiled step (which adds the optimizer and elementwise work);
  # the ResNet's model FLOPs are XLA's
  assert 1.0 <= float(rows["gpt"][5]) <= 1.6 and rows["resnet"][5] == "1.00"


def test_scaling_benchmark_quick(tmp_path):
  """2 devices per layout, counted against the GPT's parameters: on 2, data parallelism all-reduces the
  float32 gradients (the bytes of the parameters) and keeps parameters and AdamW's two moments whole on each
  device; FSDP keeps half of them; tensor parallelism splits only the attention and MLP weights."""
  import ml_collections
  from flax import nnx

  from research import models  # noqa: F401  (registers the zoo)
  from research.bench import scaling
  from research.registry import MODELS

  text = _quick(tmp_path, "scaling")
  rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
          if line.startswith(tuple(f"| {layout} |" for layout in scaling.LAYOUTS))]
  number = lambda cell: float(cell.replace(",", ""))
  timed = {(row[0], row[1]): row for row in rows if row[1].isdigit()}
  assert set(timed) == {(layout, "2") for layout in scaling.LAYOUTS}
  assert all(number(row[3]) > 0 for row in timed.values())
  config = ml_collections.ConfigDict({**scaling.GPT, **{k: v for k, v in scaling.QUICK.items() if k != "batch"}})
  gpt = MODELS.get("gpt")(config, np.zeros((2, 4), np.int32), nnx.Rngs(0))
  param_mb = sum(x.size for x in jax.tree.leaves(nnx.state(gpt, nnx.Param))) * 4 / 1e6
  assert number(timed["data", "2"][4]) == pytest.approx(param_mb, abs=0.01)
  state_mb = {layout: number(timed[layout, "2"][5]) for layout in scaling.LAYOUTS}
  assert state_mb["data"] == pytest.approx(3 * param_mb, abs=0.01)  # parameters, mu and nu, all float32
  assert state_mb["fsdp"] == pytest.approx(state_mb["data"] / 2, abs=0.01)
  assert state_mb["fsdp"] < state_mb["tensor"] < state_mb["data"]  # embeddings and norms stay whole
  memory = {row[0]: row for row in rows if row[1] == "tiny"}
  assert set(memory) == set(scaling.LAYOUTS) and all(number(row[5]) > 0 for row in memory.values())
  assert number(memory["fsdp"][3]) < number(memory["data"][3])


def test_serving_benchmark_quick(tmp_path_factory):
  """scripts/serve.py as shipped, without waiting and without batching, at concurrency 1, 16 and 64 over HTTP from the
  load generator's process; the in-process limit at the same batch sizes; the targets, each judged."""
  pytest.importorskip("starlette", reason="the `serve` extra is not installed: pip install -e '.[serve]'")
  from research.bench import serving
  from tests import serving as served

  # Peers left out: each starts in ~10 s; the full run measures them (docs/benchmarks/serving.md).
  export = served.export_smoke(tmp_path_factory, "mnist_mlp", formats=("onnx", "stablehlo"))  # both backends
  text = serving.run(quick=True, exports={"mnist_mlp": export}, peers=())
  cells = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("| ")]
  http = {(row[0], row[1], row[2]): row[3:] for row in cells if row[0] in ("1", "16", "64") and len(row) == 8}
  for c in ("1", "16", "64"):
    for setting in serving.SETTINGS:
      rate, p50, p99, cpu, _ = http[(c, f"research, {setting}", "json")]
      assert float(rate.replace(",", "")) > 0 and 0 < float(p50) <= float(p99) and float(cpu) > 0
    assert float(http[(c, f"research, {serving.SHIPPED}", "binary")][0].replace(",", "")) > 0
  in_process = [row for row in cells if len(row) == 4 and row[1] in (
      "onnxruntime (model only)", "the server's model call", "the server's model call, JAX backend")]
  assert sorted(int(row[0]) for row in in_process) == [1, 1, 1, 16, 16, 16, 64, 64, 64]
  assert all(float(row[2]) > 0 for row in in_process)
  targets = [row for row in cells if row[0] == "mnist_mlp"]
  assert len(targets) >= 2 and all(row[3] in ("yes", "no") for row in targets)
  assert "| 16 | not measured by --quick" in text  # the generation row


def test_hooks_benchmark_quick(tmp_path):
  """The periodic TensorBoard hooks timed against the train step in one process: every share consistent."""
  text = _quick(tmp_path, "hooks")
  rows = [[c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
          if line.startswith("| mlp |")]
  step_ms = float(rows[0][4])
  hooks = {row[1]: row for row in rows[1:-1]}
  assert set(hooks) == {"Histograms", "LayerNorms"} and step_ms > 0  # (the MLP's inputs are no images)
  total = 0.0
  for _, _, period, first, per_call, per_step, share in hooks.values():
    every = int(period.split()[1].replace(",", ""))
    assert float(first) > 0 and float(per_step) == pytest.approx(float(per_call) / every, abs=2e-4)
    total += float(per_step)
  assert float(rows[-1][6].strip("*%")) == pytest.approx(100 * total / step_ms, abs=0.02)
