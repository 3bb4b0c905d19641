"""The compact policy's own training stages before imitation: the perception cache and dense pre-training."""
