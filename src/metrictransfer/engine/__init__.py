"""The training loop, its callbacks, run folders, logs and result tables."""
