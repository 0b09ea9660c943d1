"""Loader workers follow the machine: a recipe's data.num_workers is capped at the usable cores."""

from __future__ import annotations

import os
import warnings

import pytest
from torch.utils.data import DataLoader

from metrictransfer.data import workers
from metrictransfer.data.workers import loader_workers, usable_cores


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is a Linux notion")
def test_workers_are_capped_at_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert usable_cores() == 2
    assert [loader_workers(n) for n in (0, 1, 2, 4, 16)] == [0, 1, 2, 2, 2]


def test_a_capped_loader_gets_no_pytorch_warning_about_its_workers():
    """Catches: every command on a 2-core machine printing PyTorch's "will create 4 worker processes"
    warning (twice) for a recipe written for a bigger one."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader = DataLoader(list(range(4)), batch_size=2, num_workers=loader_workers(workers.usable_cores() + 3))
        assert sorted(x for batch in loader for x in batch.tolist()) == [0, 1, 2, 3]
