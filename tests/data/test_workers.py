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


def test_a_one_off_embedding_pass_decodes_with_the_runs_workers_only_for_several_batches(monkeypatch):
    """Catches: a report or an index decoding a CUB-sized set in one process while the GPU waits (an H200
    check's protocol stage ran out of time there), or starting worker processes for two images."""
    monkeypatch.setattr(workers, "usable_cores", lambda: 16)
    assert workers.embedding_workers(256, 128, 8) == 0  # two batches: not worth the processes' start
    assert workers.embedding_workers(257, 128, 8) == 3  # no more workers than batches
    assert workers.embedding_workers(5900, 128, 8) == 8
    assert workers.embedding_workers(5900, 128, 32) == 16  # at most one per usable core
    assert workers.embedding_workers(5900, 128, 0) == 0  # a recipe's 0 (load in the main process) is kept


def test_an_index_of_several_batches_is_decoded_by_the_runs_loader_workers(tmp_path, monkeypatch):
    import torch

    from metrictransfer.config import build_config
    from metrictransfer.models import EmbeddingModel
    from metrictransfer.retrieval import build
    from metrictransfer.runtime.checkpoint import save_embedding_model
    from tests.helpers import coloured_gallery

    raw = {"model": {"backbone": "resnet10t", "embedding_dim": 8}, "data": {"image_size": 32, "num_workers": 2}}
    torch.manual_seed(0)
    checkpoint = save_embedding_model(EmbeddingModel("resnet10t", 8), build_config(raw), tmp_path / "run" / "checkpoint.pt")
    gallery = coloured_gallery(tmp_path / "gallery", images=3)
    asked = []
    real = build.extract_embeddings

    def spy(model, dataset, batch_size, device, num_workers=0, **kwargs):
        asked.append(num_workers)
        return real(model, dataset, batch_size, device, num_workers, **kwargs)

    monkeypatch.setattr(build, "extract_embeddings", spy)
    meta = build.build_index(checkpoint, gallery, tmp_path / "index", batch_size=2)
    assert asked == [min(2, usable_cores())]
    assert meta["count"] == len(list(gallery.rglob("*.png")))
