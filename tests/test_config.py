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
  assert config_lib.save(config, tmp_path) == []
  assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["learning_rate"] == 1e-3
  config.optimizer.learning_rate = 0.5
  assert config_lib.save(config, tmp_path) == ["optimizer.learning_rate"]
  assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["learning_rate"] == 0.5


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
