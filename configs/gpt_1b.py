"""A 1.2B-parameter GPT (GPT-3 XL's shape) on Shakespeare, for planning a sharded run: compile-only on a CPU.

    python scripts/train.py --config configs/gpt_1b.py --compile_only --devices 8 --accelerator v5e \
        --config.mesh.fsdp=8

24 blocks of width 2048 with 16 heads of 128 and 8192 hidden MLP units: 1,209,651,200 parameters. With AdamW
its parameters and optimizer state take 13.5 GiB, and a TPU v5e chip has 16 GiB: on 8 of them the run fits
only with the state split 8 ways by FSDP (docs/sharding.md shows both answers). It does not train on a CPU
in any useful time; `--compile_only` compiles its train step for the target mesh on simulated CPU devices
without allocating it.

`configs/gpt_1b.py:smoke` has 2 blocks of width 7168 (1.24B parameters: the same memory, a twelfth of the
blocks to compile), for tests of the check itself.
"""

from research import config as config_lib


def get_config(arg=None):
  config = config_lib.defaults()
  config.data.update(name="shakespeare", input_key="tokens", preprocess="", batch_size=32, eval_batch_size=64)
  config.model = dict(name="gpt", vocab_size=256, block_size=256, num_layers=24, num_heads=16, embed_dim=2048,
                      mlp_ratio=4, dropout=0.0, tie_embeddings=True, sample_prompt_length=32, sample_tokens=0,
                      sample_temperature=0.8, sample_top_k=0)
  config.optimizer.update(name="adamw", learning_rate=2e-4, b2=0.95, weight_decay=0.1, clip_norm=1.0)
  config.schedule.update(warmup_steps=2000, end_factor=0.1)
  config.train.update(epochs=0, steps=100_000, log_every=100, eval_every=5000)
  config.checkpoint.update(every=1000, keep=2, best_metric="loss", best_mode="min")
  if arg == "smoke":
    config.model.update(num_layers=2, num_heads=56, embed_dim=7168)
  elif arg:
    raise ValueError(f"configs/gpt_1b.py knows the variant 'smoke', not {arg!r}.")
  return config
