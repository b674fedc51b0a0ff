"""Shared building blocks of the vision models: pooling, conv + BatchNorm, residual blocks.

Every block takes NHWC float inputs. Blocks with BatchNorm take `train`: in
training they normalize with the batch's statistics and update the running
averages (`nnx.BatchStat` variables, kept in `TrainState.model_state`); in
evaluation (`train=False`) they use the running averages.
"""

from research.models.layers.conv import BasicBlock, ConvBN, conv_init
from research.models.layers.pooling import global_avg_pool, max_pool

__all__ = ["BasicBlock", "ConvBN", "conv_init", "global_avg_pool", "max_pool"]
