"""Bad input to train, evaluate and export: exit code 2 and one line on stderr naming the key or the flag.

The table runs in this process through the scripts' entry points (research.cli.main and
research.export.cli.main); a few rows also run the real scripts in subprocesses. evaluate and export need
no trained run here: every row fails before a checkpoint is read, so hand-made directories do (a workdir
with a config.json and no checkpoints, a config.json or manifest.json that is not one).
"""

import pytest

from research import config as config_lib
from tests import helpers

SMOKE = str(helpers.ROOT / "configs" / "mnist_mlp.py") + ":smoke"
TRAIN = ["--config", SMOKE, "--workdir", "{tmp}/train"]
RUN = ["--workdir", "{run}"]
FILES = {  # name -> text, written into the scratch directory by the fixture
    "syntax.py": "def get_config(arg=None)\n  return 1\n",
    "raises.py": "def get_config(arg=None):\n  x = 1\n  return {}['x']\n",
    "raises_on_import.py": "import os\nraise RuntimeError('no')\n",
    "badjson/config.json": "{",
    "listjson/config.json": "[]",
    "m_list/manifest.json": "[]",
    "m_bad/manifest.json": "{",
    "afile": "",
}

# (command, argv, words the one line must hold: the key or flag, and what was wrong). {tmp}: the scratch
# directory; {run}: a workdir with the smoke config's config.json and no checkpoints.
CASES = [
    # train: config values against their meaning
    ("train", [*TRAIN, "--config.data.batch_size=0"], ["data.batch_size=0", ">= 1"]),
    ("train", [*TRAIN, "--config.data.batch_size=-8"], ["data.batch_size=-8"]),
    ("train", [*TRAIN, "--config.data.batch_size=100000"], ["data.batch_size=100000", "60000 examples"]),
    ("train", [*TRAIN, "--config.data.eval_batch_size=0"], ["data.eval_batch_size=0"]),
    ("train", [*TRAIN, "--config.model.hidden_sizes=(0,)"], ["model.hidden_sizes=(0,)", ">= 1"]),
    ("train", [*TRAIN, "--config.model.hidden_sizes=(-3,)"], ["model.hidden_sizes=(-3,)"]),
    ("train", [*TRAIN, "--config.model.hidden_sizes=('a',)"], ["model.hidden_sizes=('a',)"]),
    ("train", [*TRAIN, "--config.model.num_classes=0"], ["model.num_classes=0"]),
    ("train", [*TRAIN, "--config.model.dropout=1.5"], ["model.dropout=1.5", "[0, 1)"]),
    ("train", [*TRAIN, "--config.model.dropout=-0.1"], ["model.dropout=-0.1"]),
    ("train", [*TRAIN, "--config.model.activation=foo"], ["model.activation='foo'", "Known:", "gelu, ", "relu"]),
    ("train", [*TRAIN, "--config.model.name=mpl"], ["model.name='mpl'", "Did you mean 'mlp'?"]),
    ("train", [*TRAIN, "--config.data.name=mnits"], ["data.name='mnits'", "mnist"]),
    ("train", [*TRAIN, "--config.optimizer.name=adamm"], ["optimizer.name='adamm'", "adamw"]),
    ("train", [*TRAIN, "--config.schedule.name=cosine"], ["schedule.name='cosine'", "warmup_cosine"]),
    ("train", [*TRAIN, "--config.optimizer.learning_rate=nan"], ["optimizer.learning_rate=nan", "finite"]),
    ("train", [*TRAIN, "--config.optimizer.learning_rate=-0.1"], ["optimizer.learning_rate=-0.1", "> 0"]),
    ("train", [*TRAIN, "--config.optimizer.b2=1.0"], ["optimizer.b2=1.0", "[0, 1)"]),
    ("train", [*TRAIN, "--config.optimizer.weight_decay=-1"], ["optimizer.weight_decay=-1"]),
    ("train", [*TRAIN, "--config.label_smoothing=1.0"], ["label_smoothing=1.0"]),
    ("train", [*TRAIN, "--config.train.steps=1e30"], ["'train.steps'", "expects an int", "'1e30'"]),
    ("train", [*TRAIN, "--config.train.steps=inf"], ["'train.steps'", "expects an int"]),
    ("train", [*TRAIN, "--config.train.steps=99999999999"], ["train.steps=99999999999", "2147483647"]),
    ("train", [*TRAIN, "--config.train.steps=0", "--config.train.epochs=0"], ["train.steps=0", "train.epochs=0"]),
    ("train", [*TRAIN, "--config.train.steps=0", "--config.train.epochs=1000000000"],
     ["train.epochs=1000000000", "steps a run can count"]),
    ("train", [*TRAIN, "--config.train.epochs=-1"], ["train.epochs=-1"]),
    ("train", [*TRAIN, "--config.train.log_every=-5"], ["train.log_every=-5"]),
    ("train", [*TRAIN, "--config.checkpoint.every=-1"], ["checkpoint.every=-1"]),
    ("train", [*TRAIN, "--config.train.grad_accum_steps=0"], ["train.grad_accum_steps=0", ">= 1"]),
    ("train", [*TRAIN, "--config.train.grad_accum_steps=3"],
     ["train.grad_accum_steps=3", "per-device batch of 8", "1, 2, 4, 8"]),
    ("train", [*TRAIN, "--config.remat=half"], ["remat='half'", "none, full, dots"]),
    ("train", [*TRAIN, "--config.checkpoint.keep=0"],
     ["checkpoint.keep=0: keep at least 1 checkpoint (set checkpoint.keep >= 1)."]),
    ("train", [*TRAIN, "--config.checkpoint.keep=-1"], ["checkpoint.keep=-1"]),
    ("train", [*TRAIN, "--config.schedule.warmup_steps=-10"], ["schedule.warmup_steps=-10"]),
    ("train", [*TRAIN, "--config.seed=-1"], ["seed=-1"]),
    ("train", [*TRAIN, "--config.prune.sparsity=1.5"], ["prune.sparsity", "[0, 1)"]),
    ("train", [*TRAIN, "--config.mesh.data=0"], ["mesh.data=0"]),
    ("train", [*TRAIN, "--config.parallel.strategy=foo"], ["parallel.strategy='foo'"]),
    ("train", [*TRAIN, "--config.dta.batch_size=1"], ["'dta.batch_size'", "'data.batch_size'"]),
    ("train", [*TRAIN, "--config.data.shuffle=maybe"], ["'data.shuffle'", "bool"]),
    # train: flags, and config files that do not load
    ("train", ["--config", SMOKE.replace(":smoke", ":tiny"), "--workdir", "{tmp}/train"],
     ["--config", "'tiny'", "mnist_mlp.py line "]),
    ("train", ["--config", "{tmp}/syntax.py", "--workdir", "{tmp}/train"], ["syntax.py line 1", "syntax error"]),
    ("train", ["--config", "{tmp}/raises.py", "--workdir", "{tmp}/train"], ["--config", "KeyError", "raises.py line 3"]),
    ("train", ["--config", "{tmp}/raises_on_import.py", "--workdir", "{tmp}/train"],
     ["raises_on_import.py line 2", "RuntimeError"]),
    ("train", ["--config", "configs/nope.py", "--workdir", "{tmp}/train"], ["'configs/nope.py'", "does not exist"]),
    ("train", ["--config", SMOKE], ["--workdir"]),
    ("train", [*TRAIN, "--bogus"], ["--bogus"]),
    ("train", [*TRAIN, "--num_processes", "abc"], ["--num_processes", "'abc'"]),
    ("train", [*TRAIN, "--num_processes", "2"], ["--num_processes", "--coordinator_address"]),
    ("train", [*TRAIN, "--coordinator_address", "localhost:1", "--num_processes", "0", "--process_id", "0"],
     ["--num_processes=0"]),
    ("train", [*TRAIN, "--coordinator_address", "localhost:1", "--num_processes", "2", "--process_id", "5"],
     ["--process_id=5"]),
    # evaluate
    ("evaluate", [*RUN, "--step", "abc"], ["--step", "'abc'"]),
    ("evaluate", [*RUN, "--step", "-5"], ["--step", "'-5'"]),
    ("evaluate", [*RUN, "--step", "1.5"], ["--step", "'1.5'"]),
    ("evaluate", [*RUN, "--step"], ["--step"]),
    ("evaluate", [*RUN, "--split", "validation"], ["--split", "'validation'"]),
    ("evaluate", [*RUN, "--splt", "test"], ["--splt"]),
    ("evaluate", [], ["--workdir"]),
    ("evaluate", ["--workdir", "{tmp}/nope"], ["--workdir", "does not exist"]),
    ("evaluate", ["--workdir", "{tmp}/badjson"], ["config.json", "workdir"]),
    ("evaluate", ["--workdir", "{tmp}/listjson"], ["config.json", "JSON list", "workdir"]),
    # export
    ("export", [*RUN, "--format", "onnx,pdf"], ["--format='pdf'", "stablehlo"]),
    ("export", [*RUN, "--format", ","], ["--format"]),
    ("export", [*RUN, "--step", "abc"], ["--step", "'abc'"]),
    ("export", [*RUN, "--tolerance", "-1"], ["--tolerance", "-1"]),
    ("export", [*RUN, "--tolerance", "nan"], ["--tolerance", "nan"]),
    ("export", [*RUN, "--tolerance", "tight"], ["--tolerance", "'tight'"]),
    ("export", [*RUN, "--max-accuracy-drop", "2"], ["--max-accuracy-drop", "2"]),
    ("export", [*RUN, "--accuracy-examples", "0"], ["--accuracy-examples"]),
    ("export", [*RUN, "--tflite-batch", "0"], ["--tflite-batch"]),
    ("export", [*RUN, "--parity-batch-sizes", "0,64"], ["--parity-batch-sizes"]),
    ("export", [*RUN, "--parity-batch-sizes", "a"], ["--parity-batch-sizes", "'a'"]),
    ("export", [*RUN, "--format", "stablehlo", "--out", "{run}"], ["--out", "would replace the workdir"]),
    ("export", [*RUN, "--format", "stablehlo", "--out", "{tmp}/afile"], ["--out", "is a file"]),
    ("export", [*RUN, "--bogus"], ["--bogus"]),
    ("export", [], ["--workdir", "--verify"]),
    ("export", ["--workdir", "{tmp}/nope"], ["--workdir", "does not exist"]),
    ("export", ["--workdir", "{tmp}/listjson"], ["config.json", "JSON list"]),
    ("export", ["--verify", "{tmp}/m_list"], ["--verify", "manifest.json", "JSON list"]),
    ("export", ["--verify", "{tmp}/m_bad"], ["--verify", "manifest.json", "cannot be read"]),
    ("export", ["--verify", "{tmp}/badjson"], ["--verify", "manifest.json does not exist"]),
    ("export", ["--verify", "{tmp}/nope"], ["--verify", "not a directory"]),
    ("export", ["--verify", "{tmp}/m_list", *RUN], ["--verify", "without --workdir"]),
]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("bad_input")
  for name, text in FILES.items():
    (tmp / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp / name).write_text(text)
  (tmp / "run").mkdir()
  config_lib.save(config_lib.load(SMOKE), tmp / "run")
  return tmp


def _fill(argv, tmp):
  return [a.format(tmp=tmp, run=tmp / "run") for a in argv]


def _assert_one_line(code: int, stderr: str, words: list[str]) -> None:
  lines = stderr.strip().splitlines()
  assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, stderr[-3000:])
  for word in words:
    assert word in lines[0], (word, lines[0])


def test_the_table_covers_every_script():
  assert len(CASES) >= 40 and {c for c, _, _ in CASES} == {"train", "evaluate", "export"}


@pytest.mark.parametrize("command, argv, words", CASES, ids=[f"{c}:{' '.join(a[-2:])}" for c, a, _ in CASES])
def test_bad_input_exits_2_with_one_line_naming_it(command, argv, words, scratch, capsys):
  from research import cli
  from research.export import cli as export_cli

  argv = _fill(argv, scratch)
  code = export_cli.main(argv) if command == "export" else cli.main(command, argv)
  _assert_one_line(code, capsys.readouterr().err, [w.format(tmp=scratch) for w in words])


@pytest.mark.parametrize("script, argv, words", [
    ("train.py", [*TRAIN, "--config.model.dropout=1.5"], ["model.dropout=1.5"]),
    ("train.py", ["--config", "{tmp}/raises.py", "--workdir", "{tmp}/train"], ["raises.py line 3"]),
    ("evaluate.py", [*RUN, "--step", "abc"], ["--step", "'abc'"]),
    ("export.py", ["--verify", "{tmp}/m_list"], ["--verify", "JSON list"]),
])
def test_the_real_scripts_exit_2_with_one_line(script, argv, words, scratch):
  done = helpers.run_script(script, *_fill(argv, scratch), timeout=120)
  assert "Traceback" not in done.stderr
  _assert_one_line(done.returncode, done.stderr, words)


@pytest.mark.parametrize("spec", [v for c in config_lib.available() for v in (c, f"{c}:smoke")])
def test_every_shipped_config_passes_validation(spec):
  from research.train import loop

  loop.check(config_lib.load(spec))
