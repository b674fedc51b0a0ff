import gzip
import json
import shutil

import numpy as np
import pytest

from research import config as config_lib
from research import optim
from research.errors import ConfigError
from research.train.loop import train
from tests import helpers


def _losses(workdir, tag="train/loss"):
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r[tag] for r in rows if tag in r}


def _smoke(**train):
  config = config_lib.load("configs/mnist_mlp.py:smoke")
  config.train.update({**dict(steps=10, log_every=1, eval_every=0), **train})
  return config


@pytest.mark.slow
def test_one_device_eight_devices_and_both_strategies_agree(tmp_path):
  results = {}
  for strategy in ("auto", "pmap"):
    config = _smoke()
    config.parallel.strategy = strategy
    results[f"8 devices {strategy}"] = train(config, tmp_path / strategy)
  helpers.train(tmp_path / "one", "--config.train.steps=10", "--config.train.log_every=1",
                "--config.train.eval_every=0", devices=1)
  losses = {name: _losses(tmp_path / name) for name in ("auto", "pmap", "one")}
  assert sorted(losses["auto"]) == list(range(1, 11))
  first = losses["auto"][1]
  assert 2.0 < first < 2.6  # ~ln(10) for an untrained 10-way classifier
  assert losses["auto"][10] < first - 0.5  # and it learns
  for name in ("pmap", "one"):
    np.testing.assert_allclose([losses[name][s] for s in range(1, 11)],
                               [losses["auto"][s] for s in range(1, 11)], atol=1e-5, err_msg=name)
  assert results["8 devices auto"]["accuracy"] == pytest.approx(results["8 devices pmap"]["accuracy"], abs=1e-4)


@pytest.mark.slow
def test_restart_in_a_second_process_matches_a_straight_run_bitwise(tmp_path, tmp_path_factory):
  straight_run = helpers.smoke_run(tmp_path_factory, "mnist_mlp").workdir
  first = helpers.train(tmp_path / "split", "--config.train.stop_after_steps=10")
  assert "Stopped after step 10 of 20" in first
  assert not (tmp_path / "split/checkpoints/20").exists()
  second = helpers.train(tmp_path / "split", "--config.train.stop_after_steps=10")
  assert "Resuming from step 10" in second
  straight = helpers.checkpoint_params(straight_run, 20)
  split = helpers.checkpoint_params(tmp_path / "split", 20)
  assert straight.keys() == split.keys() and len(straight) == 6
  for key in straight:
    assert np.array_equal(straight[key], split[key]), key
  straight_losses, split_losses = _losses(straight_run), _losses(tmp_path / "split")
  assert straight_losses == split_losses  # the resumed run saw exactly the same batches


def test_workdir_holds_config_checkpoints_events_and_metrics(tmp_path):
  config = _smoke(steps=20, log_every=5, eval_every=10)
  final = train(config, tmp_path)
  assert 0.6 < final["accuracy"] <= 1.0
  assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 20
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["10", "20"]
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  meta = json.loads((tmp_path / "checkpoints/20/meta/metadata").read_text())
  assert meta["data"] == {"epoch": 0, "index": 20, "preprocess_state": {}}  # smoke batch 64: 937 steps/epoch
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  tags = set().union(*rows)
  assert {"train/loss", "train/learning_rate", "perf/steps_per_sec", "perf/examples_per_sec", "eval/loss",
          "eval/accuracy"} <= tags
  assert [r["step"] for r in rows if "eval/accuracy" in r] == [10, 20]
  # XLA's FLOPs of a step of the 784-512-256-10 MLP (N weights, B = 64 rows) lie between its matmuls' forward
  # pass and weight gradients (4 N B) and those plus input gradients and Adam (8 N B). A CPU has no known peak.
  weights, batch = 784 * 512 + 512 * 256 + 256 * 10, 64
  flops = [r["perf/tflops_per_sec"] * 1e12 / r["perf/steps_per_sec"] for r in rows if "perf/tflops_per_sec" in r]
  assert len(flops) == 4 and all(4 * weights * batch < f < 8 * weights * batch for f in flops), flops
  assert "perf/mfu" not in tags
  _, schedule = optim.build(config, 20)  # the logged rate is the one step s applied: schedule(s - 1)
  rates = _losses(tmp_path, "train/learning_rate")
  assert sorted(rates) == [5, 10, 15, 20] and rates == pytest.approx({s: float(schedule(s - 1)) for s in rates})
  assert [r for r in rows if "eval/accuracy" in r][-1]["eval/accuracy"] == pytest.approx(final["accuracy"])
  # Training again in the same workdir resumes at the end: nothing is retrained or logged twice.
  again = train(config, tmp_path)
  assert again["accuracy"] == pytest.approx(final["accuracy"])
  assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == \
      [r["step"] for r in rows]


def test_the_state_initializer_compiled_for_speed_gives_the_same_state_bit_for_bit():
  """On a CPU the state's initializer compiles with LLVM at -O1 (init_compiler_options): the state equals the one
  XLA's default options compute, bit for bit (the MLP's 256 x 10 head is a shape whose threefry code LLVM's full
  optimization took longest over)."""
  import jax

  from research import parallel
  from research.train import experiment
  from research.train import state as state_lib

  config = config_lib.load("configs/mnist_mlp.py:smoke")
  make = experiment.model_factory(config, {"image": np.zeros((2, 784), np.float32)}, lambda batch: batch)
  _, init, tx, _ = experiment.state_initializer(config, make, 10, parallel.make_mesh(config))
  assert experiment.init_compiler_options() == {"xla_backend_optimization_level": 1}
  plain = jax.jit(lambda: state_lib.create(make(), tx, config.seed)[1])()  # XLA's default options
  values = lambda x: jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
  fast, plain = jax.tree.leaves(init()), jax.tree.leaves(plain)
  assert len(fast) == len(plain) > 10
  for a, b in zip(fast, plain):
    np.testing.assert_array_equal(np.asarray(values(a)), np.asarray(values(b)))


def test_compilation_cache_is_written_then_reused(tmp_path):
  helpers.train(tmp_path / "first", unset=("RESEARCH_COMPILATION_CACHE",))
  cache = tmp_path / "first" / "cache" / "jax"  # the default: inside the workdir
  entries = sorted(p.name for p in cache.iterdir())
  assert any("train_step" in name for name in entries), entries
  assert all(name.endswith("-cache") for name in entries), entries  # FileCache's entries, no temporaries left
  helpers.train(tmp_path / "second", f"--config.compilation_cache={cache}")  # another run shares it
  assert sorted(p.name for p in cache.iterdir()) == entries  # every compile was a cache hit
  assert not (tmp_path / "second" / "cache").exists()
  # A reader of the run (evaluate here; explain and export alike, through experiment.restore) uses its cache, and
  # its programs are ones training compiled: emptied, the cache gets back only entries training had written.
  for entry in cache.iterdir():
    entry.unlink()
  done = helpers.run_script("evaluate.py", "--workdir", str(tmp_path / "first"), unset=("RESEARCH_COMPILATION_CACHE",))
  assert done.returncode == 0, done.stderr[-2000:]
  read_back = sorted(p.name for p in cache.iterdir())
  assert read_back and set(read_back) <= set(entries), (read_back, entries)
  # Where the cache cannot be created (here `cache` is a file), the reader compiles without one.
  shutil.copytree(tmp_path / "first", tmp_path / "third", ignore=shutil.ignore_patterns("cache"))
  (tmp_path / "third" / "cache").write_text("not a directory")
  done = helpers.run_script("evaluate.py", "--workdir", str(tmp_path / "third"), unset=("RESEARCH_COMPILATION_CACHE",))
  assert done.returncode == 0 and (tmp_path / "third" / "eval" / "test_20.json").exists(), done.stderr[-2000:]
  assert (tmp_path / "third" / "cache").is_file()


def test_the_environment_moves_the_default_compilation_cache(tmp_path, monkeypatch):
  import jax

  from research.train import compilation

  before = jax.config.jax_compilation_cache_dir
  try:
    monkeypatch.setenv("RESEARCH_COMPILATION_CACHE", str(tmp_path / "machine"))
    assert compilation.enable("", tmp_path / "run") == tmp_path / "machine"  # one cache for every run
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "machine")
    assert compilation.enable(str(tmp_path / "own"), tmp_path / "run") == tmp_path / "own"  # a config's wins
    monkeypatch.delenv("RESEARCH_COMPILATION_CACHE")
    assert compilation.enable("", tmp_path / "run") == tmp_path / "run" / "cache" / "jax"
    assert compilation.enable("off", tmp_path / "run") is None
  finally:
    if before:  # other tests' runs go on with the session's cache
      compilation.enable(before, tmp_path)


def _traced_calls(trace: dict, name: str) -> list[tuple[float, float]]:
  """(start, end) of each call of `name` in a Chrome/Perfetto trace; nested events of a call count once."""
  spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace["traceEvents"] if e.get("name") == name and "dur" in e)
  calls = []
  for start, end in spans:
    if not calls or start >= calls[-1][1]:
      calls.append((start, end))
  return calls


def test_profile_traces_the_configured_window_of_steps(tmp_path):
  train(_smoke(steps=12, log_every=6, profile_steps=3, profile_skip=4), tmp_path)
  runs = list((tmp_path / "tensorboard/plugins/profile").iterdir())  # where TensorBoard's Profile tab looks
  assert len(runs) == 1 and list(runs[0].glob("*.xplane.pb"))
  trace = json.loads(gzip.decompress((runs[0] / "perfetto_trace.json.gz").read_bytes()))
  steps = _traced_calls(trace, "PjitFunction(_train_step)")
  assert len(steps) == 3  # steps 5-7: after the skipped ones, before the rest
  marked = [e["args"]["step_num"] for e in trace["traceEvents"] if e.get("name") == "train" and "dur" in e]
  assert marked == ["5", "6", "7"]  # the step markers the Profile tab's step-time graph is drawn from
  threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "thread_name"}
  xla_work = [e for e in trace["traceEvents"] if e.get("ph") == "X" and "XLA" in threads.get((e["pid"], e.get("tid")), "")]
  assert max(e["ts"] + e["dur"] for e in xla_work) > steps[-1][0]  # the last traced step's computation is in it

  # A run that ends inside the window still writes the trace, of the steps it took.
  train(_smoke(steps=4, profile_steps=10, profile_skip=1), tmp_path / "short")
  trace_file, = (tmp_path / "short/tensorboard/plugins/profile").glob("*/perfetto_trace.json.gz")
  assert len(_traced_calls(json.loads(gzip.decompress(trace_file.read_bytes())), "PjitFunction(_train_step)")) == 3

  with pytest.raises(ConfigError, match="train.profile_steps=-1: step counts and periods are whole numbers"):
    train(_smoke(profile_steps=-1), tmp_path / "bad")


@pytest.mark.parametrize("strategy", ["auto", "pmap"])
def test_step_metrics_equal_an_independent_loss_and_gradient_norm(strategy):
  """One SGD step on 8 devices: its loss, gradient norm and update against jax.grad and optax.tree.norm."""
  import jax
  import optax
  from flax import nnx

  from research import parallel
  from research.train import experiment
  from research.train.step import make_steps, named

  config = _smoke()
  config.parallel.strategy = strategy
  config.optimizer.update(name="sgd", learning_rate=0.5, weight_decay=0.0, clip_norm=0.0)
  config.schedule.update(name="constant", warmup_steps=0)
  rng = np.random.default_rng(0)
  raw = {"image": rng.integers(0, 256, (16, 28, 28, 1)).astype(np.uint8), "label": rng.integers(0, 10, 16)}
  preprocess = experiment.preprocessor(config, None, raw)
  batch = {**preprocess(raw), "label": raw["label"].astype(np.int32)}
  mesh = parallel.make_mesh(config)
  graphdef, state, tx, _ = experiment.build_state(config, experiment.build_model(config, raw, preprocess), 10, mesh)
  params, model_state = jax.device_get((state.params, state.model_state))
  train_step, _ = make_steps(graphdef, tx, mesh, strategy=strategy, input_key="image")
  state, metrics = train_step(state, batch)

  def loss_fn(p):
    logits = nnx.merge(graphdef, p, model_state)(batch["image"], train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)  # one compiled program, not op by op
  got = named(metrics)
  np.testing.assert_allclose(got["loss"], loss, rtol=1e-5)
  np.testing.assert_allclose(got["grad_norm"], optax.tree.norm(grads), rtol=1e-4)
  assert got["nonfinite"] == 0.0 and got["grad_norm"] > 0
  for new, old, grad in zip(jax.tree.leaves(jax.device_get(state.params)), jax.tree.leaves(params),
                            jax.tree.leaves(grads)):
    np.testing.assert_allclose(new, old - 0.5 * grad, rtol=1e-4, atol=1e-6)
