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


def embedding_workers(items: int, batch_size: int, asked: int) -> int:
    """Loader workers for a one-off embedding pass outside training (a report, an index): the run's
    ``asked`` workers (at most one per usable core) for a set of several batches, none for a small one,
    where starting the processes costs more than the decoding they would share. One process decoded 155
    CUB-sized images a second on an H200 machine while its GPU embedded thousands
    (benchmarks/results/gpu_throughput.md)."""
    if items <= 2 * batch_size:
        return 0
    return min(loader_workers(asked), -(-items // batch_size))
