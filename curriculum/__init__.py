"""The three-stage DeepSpeed curriculum (stages, data, engine loop, checkpoints)."""
