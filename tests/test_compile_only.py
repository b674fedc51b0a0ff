"""`scripts/train.py --compile_only`: a 1.2B-parameter GPT checked against a TPU v5e's 16 GiB on 8 devices, without
allocating it. configs/gpt_1b.py:smoke has the same memory in 2 blocks (1.24B parameters), so it compiles fast."""

import numpy as np
import pytest

from research import config as config_lib
from research.accelerators import GIB
from research.errors import ConfigError
from research.train import compile_only
from tests import helpers


def test_with_fsdp_the_billion_parameter_gpt_fits_a_v5e_and_each_device_holds_an_eighth():
  config = config_lib.load("configs/gpt_1b.py:smoke")
  config.mesh.update(data=1, fsdp=8)
  windows = {"tokens": np.zeros((2, 257), np.uint8)}  # two Shakespeare windows: all the model's size needs
  report = compile_only.compile_step(config, windows, lambda b: b, 8)
  assert report.parameters > 1.2e9
  assert 0 <= report.state_bytes - 3 * 4 * report.parameters < 64  # float32 parameters, Adam's moments, counts
  assert report.device_state_bytes == pytest.approx(report.state_bytes / 8, rel=1e-3)  # XLA's compiled arguments
  assert report.peak_bytes > report.device_state_bytes + report.temp_bytes - 1
  assert report.flops > 6 * report.parameters * 32 * 256 / 8  # >= 6 N D per device (D: 32 x 256 tokens, 8 ways)
  assert compile_only.check_fit(report, "v5e").startswith(f"fits: {report.peak_bytes / GIB:.2f} GiB of the 16 GiB")


def test_without_fsdp_it_exits_1_with_the_numbers():
  done = helpers.run_script("train.py", "--config", "configs/gpt_1b.py:smoke", "--compile_only", "--accelerator",
                            "v5e", "--config.mesh.data=8", devices=1)  # it starts JAX on 8 simulated devices itself
  assert done.returncode == 1, done.stderr
  assert "mesh data=8 fsdp=1 tensor=1 (8 devices)" in done.stdout
  assert "parameters: 1,236,996,096; parameters + optimizer state: 13.82 GiB in all" in done.stdout
  assert "error: does not fit: needs " in done.stderr and "of the 16 GiB of a v5e per device" in done.stderr
  assert len(done.stderr.strip().splitlines()) == 1


def test_a_mesh_of_unknown_size_or_an_unknown_accelerator_is_a_config_error():
  done = helpers.run_script("train.py", "--config", "configs/gpt_1b.py:smoke", "--compile_only", "--accelerator", "h1")
  assert done.returncode == 2 and "--compile_only needs the target's device count" in done.stderr
  with pytest.raises(ConfigError, match="--accelerator 'h1' is not known; choose one of h100, h200"):
    compile_only.check_fit(compile_only.Report({}, 0, 0, 0, 0, 0, 0, 0.0), "h1")
