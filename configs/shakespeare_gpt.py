"""Character-level GPT on Shakespeare (Gutenberg plays): validation loss <= 1.8 nats/char on 2 CPU cores.

    python scripts/train.py --config configs/shakespeare_gpt.py --workdir runs/shakespeare_gpt

A 4-layer, 128-wide decoder (0.8M parameters, block of 128 characters) on byte
ids; each batch is 4 windows of 257 characters = 8 sequences of 128 = 1,024
predicted characters (small batches, many steps: at this budget the run is
limited by the number of updates more than by tokens). "Validation" is the last 10% of the text, the dataset's
`test` split (research/data/shakespeare.py); eval reports loss (nats/char),
perplexity and bits per character, and TensorBoard gets a seeded text sample
(`samples/text`) at each evaluation.

Measured (offline Gutenberg copy, 1 CPU device): validation loss 1.692 nats/char
(perplexity 5.43, 2.44 bits/char) after 3,000 steps; 1.850 at step 1,500. Wall time
14:45 on 2 CPU cores shared with other jobs (the process got 0.93 cores on average,
829 CPU-seconds); the fastest logged interval ran 5.5 steps/s, i.e. about 9-10
minutes for the run with the cores to itself. The batch of 4 windows cannot be
split over more than 4 devices: raise data.batch_size (and the learning rate)
on larger meshes.

`configs/shakespeare_gpt.py:smoke` is a tiny variant (a few steps) for tests.
"""

from research import config as config_lib


def get_config(arg=None):
  config = config_lib.defaults()
  config.data.update(name="shakespeare", input_key="tokens",
                     preprocess="",  # the windows are byte ids already
                     batch_size=4,  # windows of 257 characters
                     eval_batch_size=128)
  config.model = dict(name="gpt", vocab_size=256, block_size=128, num_layers=4, num_heads=4, embed_dim=128,
                      mlp_ratio=4, dropout=0.0, tie_embeddings=True,
                      # The text sample logged at each evaluation: a prompt from the validation text, continued.
                      sample_prompt_length=32, sample_tokens=0, sample_temperature=0.8, sample_top_k=0)
  config.optimizer.update(name="adamw", learning_rate=2e-3, b2=0.99, weight_decay=0.01, clip_norm=1.0)
  config.schedule.update(warmup_steps=100, end_factor=0.1)
  config.train.update(epochs=0, steps=3000, log_every=100, eval_every=1500)
  config.checkpoint.update(every=1500, keep=2, best_metric="loss", best_mode="min")
  config.xla_profile = "fused_reductions"  # LayerNorm models train faster on XLA:CPU (research/xla_flags.py)

  if arg == "smoke":
    config.model.update(block_size=32, num_layers=1, num_heads=2, embed_dim=32, sample_prompt_length=8)
    config.data.update(batch_size=16, eval_batch_size=512)
    config_lib.smoke(config, steps=6)
    config.train.log_every = 3
  elif arg:
    raise ValueError(f"configs/shakespeare_gpt.py knows the variant 'smoke', not {arg!r}.")
  return config
