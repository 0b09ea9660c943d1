"""How many DataLoader worker processes to start: what a recipe asks, but no more than the cores this
process may run on. More workers than cores only compete with each other and with the training step, and
PyTorch warns about them on every loader; a recipe written for a GPU machine (``data.num_workers: 8``) then
runs unchanged on a 2-core laptop."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a scheduler such as Slurm sets)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def loader_workers(asked: int) -> int:
    """``asked`` worker processes, at most one per usable core (0 stays 0: load in the main process)."""
    return min(asked, usable_cores())
