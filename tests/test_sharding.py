"""The (data, fsdp, tensor) mesh: placement rules, one-device equivalence, 1/fsdp memory, resharding restores."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from research import parallel, sharding
from research.bench.scaling import collective_bytes
from research.checkpoint import Checkpointer, to_string_tree
from research.errors import CheckpointError, ConfigError
from research.models import gpt
from research.train import experiment
from tests import sharded

# Every (data, fsdp, tensor) whose product is 8: the 8 simulated devices. Each mesh compiles a train step (~4 s of one
# CPU), so each family runs the meshes that test something of its own: the GPT every mesh
# without tensor (the memory test's) and tensor with each other axis; the Transformer, whose attention and MLP rules
# are the GPT's, each axis alone, all three and FSDP with tensor; the CNN (no tensor rules) those without tensor.
MESHES = [(d, f, 8 // (d * f)) for d in (1, 2, 4, 8) for f in (1, 2, 4, 8) if 8 % (d * f) == 0]
FAMILY_MESHES = {"gpt": [m for m in MESHES if m[2] == 1] + [(1, 1, 8), (4, 1, 2), (2, 2, 2)],
                 "transformer": [(8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2), (1, 2, 4)],
                 "cnn": [m for m in MESHES if m[2] == 1]}


@functools.cache
def matrix(family: str) -> dict:
  """{mesh or "one": sharded.train(...)} for every mesh of `family` and one device, all from the one device's initial
  state (the sharded initializer has tests of its own, below)."""
  one = sharded.config(family)
  start = sharded.build(one, parallel.make_mesh(one, jax.devices()[:1]))
  runs = {"one": sharded.train(one, jax.devices()[:1], start=start)}
  for mesh in FAMILY_MESHES[family]:
    runs[mesh] = sharded.train(sharded.config(family, *mesh), start=start)
  return runs


@pytest.mark.parametrize("family", list(FAMILY_MESHES))
def test_meshes_of_8_devices_give_the_one_device_losses(family):
  runs = matrix(family)
  one = runs["one"]["losses"]
  assert one[-1] < 0.9 * one[0]  # it learns (the batch it sees every step)
  assert len(MESHES) == 10 and len(runs) == len(FAMILY_MESHES[family]) + 1
  for mesh in FAMILY_MESHES[family]:
    np.testing.assert_allclose(runs[mesh]["losses"], one, rtol=2e-5, err_msg=f"data, fsdp, tensor = {mesh}")


def test_gpt_weights_are_split_by_the_rules():
  state = matrix("gpt")[(2, 2, 2)]["state"]
  block = state.params["blocks"][0]
  kernels = {"qkv": block["attn"]["qkv_heads"], "proj": block["attn"]["proj"], "fc": block["fc"],
             "fc_out": block["fc_out"]}
  # Tensor over heads / hidden units (qkv and fc outputs, proj and fc_out inputs); FSDP over the other dimension.
  assert {name: layer["kernel"].sharding.spec for name, layer in kernels.items()} == {
      "qkv": P("fsdp", "tensor"), "proj": P("tensor", "fsdp"), "fc": P("fsdp", "tensor"), "fc_out": P("tensor", "fsdp")}
  adam = state.opt_state[-1][0]  # (clip, adamw's chain) -> scale_by_adam's state: moments like the parameters
  assert adam.mu["blocks"][0]["attn"]["qkv_heads"]["kernel"].sharding.spec == P("fsdp", "tensor")
  assert adam.count.sharding.spec == P()
  assert state.params["blocks"][0]["ln1"]["scale"].sharding.spec == P("fsdp")


def test_parameter_and_optimizer_bytes_per_device_fall_as_one_over_fsdp():
  runs = matrix("gpt")
  state = runs["one"]["state"]
  split = sum(x.nbytes for x in jax.tree.leaves(state.params))
  split += sum(x.nbytes for x in jax.tree.leaves(state.opt_state) if x.ndim)  # Adam's moments
  copied = sum(x.nbytes for x in jax.tree.leaves(state)) - split  # step, rng, step counts
  for fsdp in (1, 2, 4, 8):
    measured = runs[(8 // fsdp, fsdp, 1)]["state_bytes"]  # XLA's compiled memory analysis
    assert measured == split // fsdp + copied, (fsdp, measured, split // fsdp + copied)


def test_a_checkpoint_saved_on_one_mesh_restores_onto_others(tmp_path):
  mesh = parallel.make_mesh(sharded.config("gpt", 2, 4))
  _, saved, _ = sharded.build(sharded.config("gpt", 2, 4), mesh)
  checkpoints = Checkpointer(tmp_path, every=1, keep=1)
  checkpoints.save(1, saved, {"epoch": 0, "index": 0}, force=True)
  checkpoints.wait()
  expected = jax.device_get(saved)
  for target in [(8, 1), (1, 8)]:
    c = sharded.config("gpt", *target)
    c.seed = 1  # other initial values: the restore must replace every one
    _, like, _ = sharded.build(c, parallel.make_mesh(c))
    restored, meta = checkpoints.restore(like)
    assert meta["step"] == 1
    assert jax.tree.map(lambda x: x.sharding, restored) == jax.tree.map(lambda x: x.sharding, like), target
    for got, want in zip(jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(expected)):
      np.testing.assert_array_equal(got, want)
  checkpoints.close()


def _renamed(tree, old: str, new: str):
  """A string tree with every key `old` named `new`."""
  return {new if k == old else k: _renamed(v, old, new) if isinstance(v, dict) else v for k, v in tree.items()}


@pytest.mark.parametrize("family, attention", [("gpt", "attn"), ("transformer", "attention")])
def test_a_checkpoint_from_before_the_qkv_kernel_was_laid_out_by_head_is_refused(tmp_path, capsys, family, attention):
  """Its kernel has today's shape under the old name `qkv`: restoring it (a resume, or init_from's parameters alone)
  is one line naming the change and the fix, and the checkpoints are neither set aside nor tried one by one."""
  c = sharded.config(family)
  _, state, _ = sharded.build(c, parallel.make_mesh(c, jax.devices()[:1]))
  checkpoints = Checkpointer(tmp_path, every=1, keep=2)
  for step in (1, 2):
    checkpoints.save(step, _renamed(to_string_tree(state), "qkv_heads", "qkv"), {"epoch": 0, "index": 0}, force=True)
  checkpoints.wait()
  for like, partial in ((state, False), ({"params": state.params}, True)):
    with pytest.raises(CheckpointError) as error:
      checkpoints.restore(like, partial=partial)
    message = str(error.value)
    assert message.startswith(f"The checkpoint of step 2 in {tmp_path} was written before the attention's qkv kernel "
                              f"was laid out by head (") and f"/{attention}/qkv/" in message
    assert message.endswith("); retrain in a new workdir, or use the version of research that wrote it.")
    assert "\n" not in message
  assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "2"] and checkpoints.steps() == [1, 2]
  assert "unreadable" not in capsys.readouterr().err
  checkpoints.close()


def _qkv_of_all_heads(qkv, num_heads):
  """The layout before split_heads: [q of every head | k of every head | v of every head]."""
  b, length, width = qkv.shape
  return jnp.split(qkv.reshape(b, length, 3 * num_heads, width // (3 * num_heads)), 3, axis=2)


def test_tensor_parallelism_keeps_whole_heads_on_each_device(monkeypatch):
  """The qkv kernel's columns are laid out by head, so tensor=2 gives each device two of the GPT's 4 heads whole: the
  step's only collectives are all-reduces (the Megatron pair of each block, the gradients over data). Laid out
  [q | k | v] of all heads, as before, each device's columns were parts of q, k and v of every head, and XLA moved
  them between the devices in every attention (all-to-all, collective-permute: 209,761 bytes per step in all against
  127,841 by head)."""
  c = sharded.config("gpt", 4, 1, 2)
  by_head = sharded.compile_step(c)[0].as_text()
  monkeypatch.setattr(gpt, "split_heads", _qkv_of_all_heads)
  before, after = collective_bytes(sharded.compile_step(c)[0].as_text()), collective_bytes(by_head)
  assert before["all-to-all"] > 0  # what a reshuffle looks like to this test
  assert "all-to-all" not in by_head and {kind for kind, size in after.items() if size} == {"all-reduce"}
  assert sum(after.values()) < sum(before.values())


def test_a_tensor_size_that_splits_heads_is_warned_about():
  split = sharded.config("gpt", 1, 1, 8)  # 4 heads on 8 devices
  message = parallel.tensor_warning(split, parallel.make_mesh(split))
  assert message.startswith("warning: mesh.tensor=8 does not divide model.num_heads=4") and "\n" not in message
  for c in (sharded.config("gpt", 2, 1, 4), sharded.config("gpt", 8), sharded.config("cnn", 1, 1, 8)):
    assert parallel.tensor_warning(c, parallel.make_mesh(c)) is None  # whole heads, no tensor, no heads


def test_a_config_rule_overrides_the_family_defaults():
  c = sharded.config("gpt", 1, 4, 2, rules=((r"blocks/\d+/fc/kernel", None), (r"token_embed/.*", ("tensor",))))
  mesh = parallel.make_mesh(c)
  rules = sharding.rules(c)
  assert sharding.param_spec("blocks/0/fc/kernel", (32, 128), mesh, rules) == P()
  assert sharding.param_spec("token_embed/embedding", (64, 32), mesh, rules) == P("tensor", "fsdp")
  assert sharding.param_spec("blocks/1/fc_out/kernel", (128, 32), mesh, rules) == P("tensor", "fsdp")  # a default
  assert sharding.param_spec("ln_f/bias", (6,), mesh, rules) == P()  # no dimension FSDP divides: whole


@pytest.mark.parametrize("mesh, rules, message", [
    (dict(data=3), (), "mesh.data=3, mesh.fsdp=1, mesh.tensor=1 does not divide the 8 devices"),
    (dict(data=-1, fsdp=-1), (), "only one axis can be -1"),
    (dict(data=1, fsdp=8), (("blocks/(", None),), "mesh.rules[0]: 'blocks/(' is not a regular expression"),
    (dict(data=1, fsdp=8), ((".*", ("model",)),), "mesh.rules[0]: 'model' is not a mesh axis"),
    (dict(data=1, fsdp=8), (".*",), "mesh.rules[0]='.*' is not a (regex, spec) pair"),
    (dict(data=1, tensor=8), ((r"ln_f/scale", ("tensor",)),), "ln_f/scale has shape (12,); its dimension 0 (12) "
                                                               "cannot be split 8 ways"),
], ids=["product", "two rests", "regex", "axis", "pair", "divides"])
def test_bad_meshes_and_rules_are_one_line_config_errors(mesh, rules, message):
  c = sharded.config("gpt", **{"data": -1, **mesh}, rules=rules)
  with pytest.raises(ConfigError) as error:
    sharding.param_spec("ln_f/scale", (12,), parallel.make_mesh(c), sharding.rules(c))
  assert message in str(error.value) and "\n" not in str(error.value)


def test_the_pmap_strategy_refuses_fsdp_and_tensor():
  c = sharded.config("gpt", 4, 2)
  c.parallel.strategy = "pmap"
  with pytest.raises(ConfigError, match="parallel.strategy='pmap' splits only the data axis"):
    parallel.make_mesh(c)
  c.mesh.update(data=8, fsdp=1)
  assert dict(parallel.make_mesh(c).shape) == {"data": 8, "fsdp": 1, "tensor": 1}


def test_initialization_computes_only_each_device_s_shards():
  """The TrainState is initialized by one program whose outputs are split by the rules: with fsdp=8 each device
  computes and holds an eighth of what one device does (XLA's memory analysis), and the values are the eager ones."""
  analyses, states = {}, {}
  for fsdp in (1, 8):
    c = sharded.config("gpt", 8 // fsdp, fsdp)
    mesh = parallel.make_mesh(c)
    _, init, _, _ = experiment.state_initializer(c, sharded.factory(c), 10, mesh)
    analyses[fsdp], states[fsdp] = init.lower().compile().memory_analysis(), init()
  whole = sum(x.nbytes for x in jax.tree.leaves(states[1]))
  assert analyses[1].output_size_in_bytes >= whole
  own = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(states[8]))  # one device's shards
  assert own < whole / 8 * 1.05  # (the step, rng and counts are copied: a few bytes)
  assert own <= analyses[8].output_size_in_bytes <= own * 1.05
  assert 0 < analyses[8].temp_size_in_bytes <= analyses[1].temp_size_in_bytes / 5  # random bits: per shard too
  assert sharding.of(states[8]) == sharding.state_shardings(states[8], mesh, sharding.rules(c))
  eager = experiment.build_model(c, sharded.batch("gpt"), lambda b: b)  # op by op, unsplit
  for mine, theirs in zip(jax.tree.leaves(states[8].params), jax.tree.leaves(nnx.to_pure_dict(nnx.state(eager, nnx.Param)))):
    np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), rtol=1e-6, atol=1e-7)
