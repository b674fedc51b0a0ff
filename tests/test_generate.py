"""Text generation from an export directory alone equals the trained model's own, seed for seed, past its context.

The test run's shared smoke GPT (block_size 32; tests/helpers.py) is exported; `Generator` and
scripts/generate.py then see only the export directory.
"""

import json

import jax
import numpy as np
import pytest

from research.data.shakespeare import decode, encode
from research.errors import InputError
from tests import helpers

PROMPT = "ROMEO: But soft, what"  # 21 bytes; with 40 more the context (32) slides twice


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
  from research.export import export

  workdir = helpers.smoke_run(tmp_path_factory, "shakespeare_gpt").workdir
  return workdir, export(workdir, formats=("stablehlo",), out=tmp_path_factory.mktemp("gpt") / "export",
                         batch_sizes=(1,), log=lambda _: None)


def _trained_text(workdir, prompt: str, max_tokens: int, **sampling) -> str:
  from research.models.gpt import generate
  from research.train.experiment import trained_model

  model, _, _ = trained_model(workdir)
  seed = sampling.pop("seed")
  ids = generate(model, encode(prompt)[None].astype(np.int32), max_tokens, rng=jax.random.key(seed), **sampling)
  return decode(ids[0, len(encode(prompt)):])


def test_the_manifest_says_what_the_model_takes(gpt):
  manifest = json.loads((gpt[1] / "manifest.json").read_text())
  assert manifest["inputs"] == [{"name": "tokens", "shape": [None, 32], "dtype": "int32"}]
  assert "raw_inputs" not in manifest["preprocessing"]  # not the dataset's uint8[257] windows
  section = manifest["generation"]
  assert section["tokenizer"] == {"kind": "bytes", "encoding": "utf-8", "vocab_size": 256}
  assert section["block_size"] == 32 and section["check"]["agreement"] == 1.0


def test_a_seeded_generation_equals_the_trained_models_and_streams_the_same_text(gpt):
  from research.serve.generate import Generator

  workdir, export_dir = gpt
  model = Generator.load(export_dir)
  sampling = dict(temperature=0.9, top_k=20, seed=5)
  streamed = []
  text = model.generate(PROMPT, 40, on_text=streamed.append, **sampling)
  assert text and "".join(streamed) == text
  assert text == model.generate(PROMPT, 40, **sampling)  # reproducible
  assert text == _trained_text(workdir, PROMPT, 40, **sampling)
  assert text != model.generate(PROMPT, 40, temperature=0.9, top_k=20, seed=6)


def test_generate_script_prints_the_prompt_and_the_same_continuation(gpt):
  workdir, export_dir = gpt
  done = helpers.run_script("generate.py", "--export", str(export_dir), "--prompt", PROMPT, "--max_tokens", "40",
                            "--temperature", "0", "--seed", "1")
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout == PROMPT + _trained_text(workdir, PROMPT, 40, temperature=0.0, seed=1) + "\n"
  bad = helpers.run_script("generate.py", "--export", str(export_dir), "--prompt", PROMPT, "--max_tokens", "0")
  assert bad.returncode == 2 and bad.stderr.strip() == "error: max_tokens must be a whole number from 1 to 100000, got 0."


@pytest.mark.parametrize("request_, words", [
    (("", 5, 1.0, 0, 0), "prompt must be a non-empty string"),
    (("a", 5, -1.0, 0, 0), "temperature"),
    (("a", 5, float("nan"), 0, 0), "temperature"),
    (("a", 5, 1.0, -2, 0), "top_k"),
    (("a", 5, 1.0, 0, -1), "seed"),
    (("a", True, 1.0, 0, 0), "max_tokens"),
    (("a", 5, 1.0, 2**31, 0), "top_k must be a whole number from 0"),
    (("a\ud800", 5, 1.0, 0, 0), "character 1 is a lone surrogate"),
])
def test_requests_that_cannot_be_generated_are_named(request_, words):
  from research.serve.generate import check_request

  with pytest.raises(InputError, match=words):
    check_request(*request_)


def test_each_row_of_a_shared_step_draws_as_its_own_stream_would():
  """The server draws every stream's token in one call (research/serve/streams.py); each row must be exactly the
  token `sliding_generate` draws for a one-row prompt with that row's seed, step, temperature and top_k."""
  from research.models.gpt import _sample, sample_rows

  logits = np.random.default_rng(0).standard_normal((5, 256)).astype(np.float32) * 3
  seeds, steps = [0, 5, 2**32 - 1, 7, 5], np.array([0, 3, 9, 100, 3], np.int32)
  temperature, top_k = np.array([0.9, 0.5, 1.0, 0.0, 0.5], np.float32), np.array([20, 0, 5, 0, 1], np.int32)
  key_data = np.stack([jax.random.key_data(jax.random.key(s)) for s in seeds])
  rows = sample_rows(logits, key_data, steps, temperature, top_k)
  alone = [_sample(logits[i:i + 1], jax.random.fold_in(jax.random.key(seeds[i]), steps[i]), temperature[i],
                   top_k[i])[0] for i in range(5)]
  assert np.asarray(rows).tolist() == np.asarray(alone).tolist()
