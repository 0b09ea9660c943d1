"""The decoded-image cache (data.cache: memory): each image decoded once and kept shrunk, the same pixels in
every data-loader worker, unreadable files still skipped, a cache too large for the memory refused before
decoding, and a run that uses it."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from metrictransfer.config import build_config
from metrictransfer.data.cache import MemoryCache, cache_side, memory_cache, shrink
from metrictransfer.engine.trainer import Trainer
from metrictransfer.errors import ConfigError


class _Photos(torch.utils.data.Dataset):
    """Nine photos of assorted sizes and orientations; the fourth unreadable (skipped: None)."""

    def __init__(self) -> None:
        self.reads = 0
        self.labels = [i % 3 for i in range(9)]

    def __len__(self) -> int:
        return 9

    def __getitem__(self, i: int):
        self.reads += 1
        if i == 3:
            return None
        size = [(120, 90), (90, 120), (40, 30), (300, 60)][i % 4]
        pixels = np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        return Image.fromarray(pixels), self.labels[i]


def _pixels(item) -> np.ndarray:
    return np.asarray(item[0])


def test_each_image_is_decoded_once_and_kept_shrunk_to_its_short_side():
    photos = _Photos()
    cache = memory_cache(photos, image_size=42)  # short side 48
    assert cache.short_side == cache_side(42) == 48 and cache_side(224) == 256
    for _ in range(2):
        for i in range(len(photos)):
            item = cache[i]
            if i == 3:
                assert item is None
                continue
            original = _Photos()[i]
            assert np.array_equal(_pixels(item), np.asarray(shrink(original[0], 48))) and item[1] == original[1]
            assert min(item[0].size) == min(48, min(original[0].size))  # shrunk, never enlarged
            assert item[0].size[0] / item[0].size[1] == pytest.approx(original[0].size[0] / original[0].size[1], rel=0.03)
    assert photos.reads == len(photos)
    assert cache.nbytes() == sum(np.asarray(shrink(_Photos()[i][0], 48)).nbytes for i in range(9) if i != 3)


@pytest.mark.slow
def test_workers_read_the_same_pixels_from_shared_memory():
    cache = memory_cache(_Photos(), image_size=42, workers=2)
    assert all(block.is_shared() for block in cache.blocks)

    def pixels(workers: int) -> list:
        loader = DataLoader(cache, batch_size=None, num_workers=workers, collate_fn=lambda item: item)
        return [None if item is None else _pixels(item) for item in loader]

    alone, shared = pixels(0), pixels(2)
    assert all((a is None and b is None) or np.array_equal(a, b) for a, b in zip(alone, shared))


def test_a_cache_larger_than_half_the_memory_is_refused_before_decoding():
    photos = _Photos()
    with pytest.raises(ConfigError, match="data.cache: memory would keep 9 images.*set data.cache: none"):
        memory_cache(photos, image_size=224, available=10**6)
    assert photos.reads == 0


@pytest.mark.slow
def test_a_run_with_the_cache_trains_on_the_cached_images(tmp_path, capsys):
    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for c in range(6):
        (root / f"class{c}").mkdir(parents=True)
        for k in range(6):
            Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{k}.jpg")
    raw = {
        "method": "source",
        "data": {
            "dataset": "folder",
            "root": str(root),
            "image_size": 32,
            "classes_per_batch": 3,
            "images_per_class": 2,
            "cache": "memory",
        },
        "model": {"backbone": "resnet10t", "embedding_dim": 8},
        "optim": {"epochs": 1},
        "eval": {"recall_at": [1]},
        "threads": 2,
    }
    trainer = Trainer(build_config(raw), tmp_path / "run", progress=False, callbacks=[])
    trainer.setup()
    images = trainer.loader.dataset.dataset
    assert isinstance(images, MemoryCache) and images.short_side == 37
    assert "training images cached in memory: 18 " in capsys.readouterr().out
    trainer.start_epoch()
    logs = trainer.step(next(iter(trainer.loader)))
    assert np.isfinite(logs["loss"])
