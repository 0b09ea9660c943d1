"""Evaluation views kept between evaluations: the same numbers as a fresh decode (bit for bit on the CPU),
each image decoded once, a set over its budget decoded every time, a process's share kept on its own."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from metrictransfer.data.multiview import MultiViewDataset
from metrictransfer.data.transforms import build_transform
from metrictransfer.evaluation import kept_views
from metrictransfer.evaluation.embed import extract_embeddings
from metrictransfer.evaluation.kept_views import KeptViews, keep_views, placement

SIZE = 24
COUNT = 23


class _Photos(torch.utils.data.Dataset):
    """Photos of assorted sizes (the test transform makes them one size); two unreadable (skipped: None)."""

    def __init__(self) -> None:
        self.reads = 0
        self.labels = [i % 4 for i in range(COUNT)]

    def __len__(self) -> int:
        return COUNT

    def __getitem__(self, i: int):
        self.reads += 1
        if i in (6, 17):
            return None
        rng = np.random.default_rng(i)
        pixels = rng.integers(0, 256, (30 + 7 * (i % 5), 40 + 3 * (i % 3), 3), dtype=np.uint8)
        return Image.fromarray(pixels), self.labels[i]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


@pytest.mark.parametrize(("transform", "normalization"), [("paper", "imagenet"), ("glyphs", "imagenet"), ("paper", "bn_inception")])
def test_kept_views_give_the_very_embeddings_of_a_fresh_decode_and_decode_each_image_once(transform, normalization, capsys):
    model, test = _model(), build_transform(transform, False, SIZE, normalization)
    fresh = extract_embeddings(model, MultiViewDataset(_Photos(), test), batch_size=5, return_indices=True)
    photos = _Photos()
    kept = keep_views(MultiViewDataset(photos, test), budget_gb=1.0, say=print, name="test")
    assert isinstance(kept, KeptViews)
    for _ in range(3):
        got = extract_embeddings(model, kept, batch_size=5, return_indices=True)
        for a, b in zip(got, fresh):
            assert torch.equal(a, b)
    assert photos.reads == COUNT  # once each
    said = capsys.readouterr().out
    assert said.count("test views kept in host memory: 21 images of 3 × 24 × 24") == 1


def test_a_set_over_its_budget_is_decoded_at_every_evaluation_with_the_same_result(capsys):
    model, test = _model(), build_transform("paper", False, SIZE)
    fresh = extract_embeddings(model, MultiViewDataset(_Photos(), test), batch_size=4)
    photos = _Photos()
    kept = keep_views(MultiViewDataset(photos, test), budget_gb=COUNT * 3 * SIZE * SIZE / 1e9 / 2, say=print)
    for _ in range(2):
        got = extract_embeddings(model, kept, batch_size=4)
        assert all(torch.equal(a, b) for a, b in zip(got, fresh))
    assert photos.reads >= 2 * COUNT
    assert "not kept" in capsys.readouterr().out and kept.store is None


def test_a_process_share_keeps_every_world_th_image_with_its_own_index():
    model, test = _model(), build_transform("paper", False, SIZE)
    whole = extract_embeddings(model, MultiViewDataset(_Photos(), test), batch_size=64, return_indices=True)
    kept = keep_views(MultiViewDataset(_Photos(), test), budget_gb=1.0)
    parts = [extract_embeddings(model, kept.part(rank, 3), batch_size=64, return_indices=True) for rank in range(3)]
    assert kept.part(1, 3) is kept.part(1, 3)  # made once, kept between evaluations
    indices = torch.cat([p[2] for p in parts])
    order = torch.argsort(indices)
    assert torch.equal(indices[order], whole[2])
    assert torch.allclose(torch.cat([p[0] for p in parts])[order], whole[0], atol=1e-6)
    assert all(set(p[2].tolist()) <= set(range(rank, COUNT, 3)) for rank, p in enumerate(parts))


def test_sets_that_cannot_be_kept_are_left_as_they_are():
    train = MultiViewDataset(_Photos(), build_transform("paper", True, SIZE), views=2)
    assert keep_views(train, 1.0) is train  # two random views: nothing to keep
    test = MultiViewDataset(_Photos(), build_transform("paper", False, SIZE))
    assert keep_views(test, 0.0) is test  # eval.keep_views_gb: 0
    raw = _Photos()
    assert keep_views(raw, 1.0) is raw


def test_placement_prefers_the_device_then_host_memory_within_the_budget(monkeypatch):
    monkeypatch.setattr(kept_views, "available_host_bytes", lambda: 1000)
    cpu = torch.device("cpu")
    assert placement(400, budget=500, device=cpu) == "host"
    assert placement(600, budget=10_000, device=cpu) is None  # more than half of what is available
    assert placement(400, budget=300, device=cpu) is None
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2000, 4000))
    cuda = torch.device("cuda", 0)
    assert placement(500, budget=10_000, device=cuda) == "device"
    assert placement(501, budget=10_000, device=cuda) is None  # nor half of the host's 1000
    monkeypatch.setattr(kept_views, "available_host_bytes", lambda: 5000)
    assert placement(501, budget=10_000, device=cuda) == "host"
