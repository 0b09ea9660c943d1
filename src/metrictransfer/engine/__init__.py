"""Training loop, checkpoints and logs."""
