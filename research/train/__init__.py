"""Training: the TrainState pytree, jitted steps, and the loop."""
