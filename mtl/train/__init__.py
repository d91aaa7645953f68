"""Training: the single-process loop, checkpoints, and the evaluation helper."""
