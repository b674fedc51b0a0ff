import json
import os
import stat
import threading

import pytest

from research import atomic
from research import config as config_lib
from research.errors import ConfigError
from research.registry import MODELS, Registry

SPEC = "configs/mnist_mlp.py"


def test_overrides_parse_into_the_fields_types():
  config = config_lib.load(SPEC)
  config_lib.apply_overrides(config, [
      "--config.optimizer.learning_rate=0.01", "--config.data.batch_size=64", "--config.data.shuffle=false",
      "--config.model.hidden_sizes=(32,16)", "--config.optimizer.name=sgd", "--config.optimizer.clip_norm=2",
  ])
  assert config.optimizer.learning_rate == 0.01
  assert config.data.batch_size == 64 and isinstance(config.data.batch_size, int)
  assert config.data.shuffle is False
  assert tuple(config.model.hidden_sizes) == (32, 16)
  assert config.optimizer.name == "sgd"
  assert config.optimizer.clip_norm == 2.0 and isinstance(config.optimizer.clip_norm, float)


def test_unknown_key_suggests_the_nearest():
  config = config_lib.load(SPEC)
  with pytest.raises(ConfigError, match="Unknown config key 'optimizer.lerning_rate'.*'optimizer.learning_rate'"):
    config_lib.apply_overrides(config, ["--config.optimizer.lerning_rate=1"])
  with pytest.raises(ConfigError, match="Did you mean 'data.batch_size'"):
    config_lib.apply_overrides(config, ["--config.dta.batch_size=1"])


@pytest.mark.parametrize("override, expected", [
    ("--config.data.batch_size=big", "expects an int"),
    ("--config.data.batch_size=1.5", "expects an int"),
    ("--config.optimizer.learning_rate=fast", "expects a float"),
    ("--config.data.shuffle=maybe", "expects a bool"),
    ("--config.model.hidden_sizes=12", "expects a list"),
    ("--config.optimizer=adam", "is a group"),
    ("--config.optimizer.learning_rate", "--config.some.key=value"),
])
def test_wrong_values_fail_with_the_expected_type(override, expected):
  with pytest.raises(ConfigError, match=expected):
    config_lib.apply_overrides(config_lib.load(SPEC), [override])


def test_variant_and_missing_file():
  assert config_lib.load(SPEC + ":smoke").train.steps == 20
  with pytest.raises(ConfigError, match="does not exist"):
    config_lib.load("configs/nope.py")


def test_resolved_config_is_written_and_changes_are_reported(tmp_path):
  config = config_lib.load(SPEC)
  assert config_lib.changes(config, tmp_path) == {}
  config_lib.save(config, tmp_path)
  assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["learning_rate"] == 1e-3
  config.optimizer.learning_rate = 0.5
  assert config_lib.changes(config, tmp_path) == {"optimizer.learning_rate": [1e-3, 0.5]}
  config_lib.save(config, tmp_path)
  assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["learning_rate"] == 0.5
  config_lib.record_changes(tmp_path, 10, {"optimizer.learning_rate": [1e-3, 0.5]})
  assert [h["step"] for h in config_lib.history(tmp_path)] == [10]


def test_keys_added_since_a_workdir_was_written_are_not_changes(tmp_path):
  """config.json of an older version lacks the keys added since: at their defaults they are no change."""
  config = config_lib.load(SPEC)
  config_lib.save(config, tmp_path)
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["train"]["grad_accum_steps"], saved["hooks"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  assert config_lib.changes(config, tmp_path) == {}
  config.train.grad_accum_steps = 2
  assert config_lib.changes(config, tmp_path) == {"train.grad_accum_steps": [1, 2]}


def test_processes_saving_one_workdir_at_once_never_clash(tmp_path):
  """Every process of a multi-host run writes config.json; a shared temporary name made one fail."""
  config, errors = config_lib.load(SPEC), []

  def save_many():
    try:
      for _ in range(200):
        config_lib.save(config, tmp_path)
    except Exception as e:  # noqa: BLE001  (collected and asserted below)
      errors.append(e)

  writers = [threading.Thread(target=save_many) for _ in range(4)]
  for w in writers:
    w.start()
  for w in writers:
    w.join()
  assert errors == []
  assert json.loads((tmp_path / "config.json").read_text()) == config_lib.to_dict(config)
  assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary file left behind
  umask = os.umask(0)
  os.umask(umask)
  assert stat.S_IMODE((tmp_path / "config.json").stat().st_mode) == 0o666 & ~umask


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path):
  path = tmp_path / "state.json"
  atomic.write_text(path, "old")
  with pytest.raises(RuntimeError), atomic.replacing(path) as tmp:
    tmp.write_text("half")
    raise RuntimeError("crash while writing")
  assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_unknown_registry_name_lists_the_known_ones():
  import research.models  # noqa: F401

  with pytest.raises(ConfigError, match=r"Unknown model 'mpl'. Did you mean 'mlp'\? Known: .*mlp"):
    MODELS.get("mpl")
  registry = Registry("thing")
  registry.register("a")(1)
  with pytest.raises(ValueError, match="registered twice"):
    registry.register("a")(2)


def _variants(path: str) -> list[str]:
  return [path, f"{path}:smoke"]


@pytest.mark.parametrize("spec", [v for c in config_lib.available() for v in _variants(c)])
def test_every_config_has_every_default_key_with_its_type(spec):
  """Configs start from defaults() and set only what differs, so every documented option works on every config."""
  config = config_lib.load(spec)
  defaults = config_lib.defaults()
  keys = [k for k in config_lib.leaf_keys(defaults) if not k.startswith("model.")]
  flat = dict(config_lib._flat(config_lib.to_dict(config)))
  missing = [k for k in keys if k not in flat]
  assert not missing, f"{spec} lacks {missing}"
  want = config_lib._flat(config_lib.to_dict(defaults))
  wrong = [k for k in keys if type(flat[k]) is not type(want[k]) and not (isinstance(want[k], float)
                                                                          and isinstance(flat[k], int))]
  assert not wrong, f"{spec}: {[(k, flat[k]) for k in wrong]}"
  assert config.model.name and config.data.name
  config_lib.apply_overrides(config, ["--config.prune.sparsity=0.9", "--config.train.profile_steps=5"])


def test_the_zoo_marks_its_best_checkpoint_so_step_best_works():
  for spec in config_lib.available():
    config = config_lib.load(spec)
    assert config.checkpoint.best_metric in ("accuracy", "loss", "nelbo"), spec


@pytest.mark.parametrize("spec, message", [
    ("mnist_mlp", "Did you mean configs/mnist_mlp.py?"),
    ("configs/mnist_mpl.py", "Did you mean configs/mnist_mlp.py?"),
    ("configs/mnist_mlp.py:tiny", "knows the variant 'smoke', not 'tiny'"),
])
def test_config_file_mistakes_are_one_line_errors(spec, message):
  with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace(".", r"\.")) as error:
    config_lib.load(spec)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("body, message", [
    ("def get_config(arg=None)\n  return 1\n", "line 1: syntax error"),
    ("def get_config(arg=None):\n  return {}['x']\n", "--config BAD: KeyError: 'x'"),
    ("import not_a_module\n", "failed to load: ModuleNotFoundError"),
])
def test_a_broken_config_file_is_a_one_line_error(tmp_path, body, message):
  path = tmp_path / "bad.py"
  path.write_text(body)
  with pytest.raises(ConfigError, match=message.replace("BAD", str(path)).replace("[", r"\[").replace("(", r"\(")):
    config_lib.load(str(path))


def test_a_saved_config_gets_the_keys_added_since():
  saved = config_lib.to_dict(config_lib.load(SPEC))
  del saved["prune"], saved["train"]["profile_steps"]
  saved["model"] = {"name": "mlp", "hidden_sizes": [8]}
  config = config_lib.with_defaults(saved)
  assert config.prune.sparsity == 0.0 and config.train.profile_steps == 0
  assert config.model.to_dict() == {"name": "mlp", "hidden_sizes": [8]}  # the model group is the saved one
  assert config.optimizer.learning_rate == saved["optimizer"]["learning_rate"]
