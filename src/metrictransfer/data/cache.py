"""Training images decoded once and kept in memory (``data.cache: memory``), shrunk to a short side a bit
above the training size, shared by the data-loader workers without copies.

Why: decoding a 500 × 375 JPEG and cropping the decoded image costs most of a training view's time on
the CPU, every epoch, while a GPU step consumes 1,000–2,600 images a second (benchmarks/results/loader.md).
A kept image at a short side of ``image_size × 256/224`` (256 px for 224) needs no decode and is cropped
from about half the pixels. The crops are drawn as before, relative to the image; what changes is that the
crop is resampled from the shrunk image, not the original (benchmarks/results/loader.md shows what the
models learn either way).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from metrictransfer.data.protocol import DatasetWrapper, RetrievalDataset
from metrictransfer.data.workers import loader_workers
from metrictransfer.errors import ConfigError

#: Bytes per shared block; images are packed into blocks of this size (one block per image would hold a
#: file descriptor each in the workers).
BLOCK_BYTES = 256 * 2**20
#: What may be kept in host memory (this cache, kept evaluation views): at most this share of what is available.
HOST_SHARE = 0.5


def cache_side(image_size: int) -> int:
    """The short side kept: the test transform's resize for ``image_size`` (256 for 224)."""
    return round(image_size * 256 / 224)


def shrink(image: Image.Image, short_side: int) -> Image.Image:
    """``image`` with its short side brought down to ``short_side`` (antialiased bilinear, as torchvision's
    resize of PIL images), or unchanged when already that small."""
    width, height = image.size
    scale = short_side / min(width, height)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


class _Shrunk(Dataset[Any]):
    def __init__(self, images: RetrievalDataset, short_side: int) -> None:
        self.images, self.short_side = images, short_side

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, int]:
        item = self.images[i]
        if item is None:  # unreadable, skipped by the dataset (data.skip_bad_images)
            return i, None, -1
        image, label = item
        return i, np.asarray(shrink(image, self.short_side).convert("RGB")), int(label)


def _as_is(item: Any) -> Any:
    return item  # the workers' arrays as they are (the default would make read-only tensors of them)


class MemoryCache(DatasetWrapper, Dataset[Any]):
    """The items of ``images`` (``(PIL RGB image, label)`` or None), decoded once at :meth:`build` and kept
    shrunk (:func:`shrink`) as uint8 in shared memory; items come back as PIL images of the kept pixels. The
    training loader's :class:`~metrictransfer.data.multiview.MultiViewDataset` reads it; its labels, item
    names and the rest are ``images``' (:class:`~metrictransfer.data.protocol.DatasetWrapper`)."""

    def __init__(self, images: RetrievalDataset, short_side: int) -> None:
        self.dataset = images
        self.short_side = short_side
        self.blocks: list[torch.Tensor] = []
        self.places: list[tuple[int, int, int, int] | None] = []  # (block, offset, height, width) per item
        self.item_labels: list[int] = []

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Image.Image, int] | None:
        place = self.places[i]
        if place is None:
            return None
        block, offset, height, width = place
        pixels = self.blocks[block][offset : offset + height * width * 3].numpy().reshape(height, width, 3)
        return Image.fromarray(pixels), self.item_labels[i]

    def build(self, workers: int = 0, progress: bool = False) -> MemoryCache:
        """Decode every image once (``workers`` loader processes), with a progress bar when asked."""
        count = len(self)
        self.places = [None] * count
        self.item_labels = [-1] * count
        block: torch.Tensor | None = None
        used = 0
        loader = DataLoader(_Shrunk(self.dataset, self.short_side), batch_size=None, num_workers=loader_workers(workers), collate_fn=_as_is)
        for i, pixels, label in tqdm(loader, total=count, desc="caching training images", disable=not progress, unit="image"):
            if pixels is None:
                continue
            size = pixels.size
            if block is None or used + size > block.numel():
                block = torch.empty(max(BLOCK_BYTES, size), dtype=torch.uint8).share_memory_()  # type: ignore[no-untyped-call]
                self.blocks.append(block)
                used = 0
            block[used : used + size].numpy()[:] = pixels.reshape(-1)
            self.places[i] = (len(self.blocks) - 1, used, pixels.shape[0], pixels.shape[1])
            self.item_labels[i] = label
            used += size
        return self

    def nbytes(self) -> int:
        return sum(place[2] * place[3] * 3 for place in self.places if place is not None)


def available_host_bytes() -> int:
    """Memory the system can give without swapping (Linux's MemAvailable; else free pages)."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def estimated_bytes(count: int, short_side: int, aspect: float = 4 / 3) -> int:
    """Memory for ``count`` images kept at ``short_side`` with a long side ``aspect`` times longer."""
    return count * short_side * math.ceil(short_side * aspect) * 3


def memory_cache(
    images: RetrievalDataset, image_size: int, workers: int = 0, progress: bool = False, available: int | None = None
) -> MemoryCache:
    """``images`` decoded once into a :class:`MemoryCache`, refused (ConfigError naming ``data.cache``) when
    CUB-shaped images (4:3) at the kept size would take more than half of the memory ``available``."""
    available = available_host_bytes() if available is None else available
    side = cache_side(image_size)
    need = estimated_bytes(len(images), side)
    if need > HOST_SHARE * available:
        raise ConfigError(
            f"data.cache: memory would keep {len(images):,} images at a short side of {side} px, about "
            f"{need / 1e9:.1f} GB, more than half of the {available / 1e9:.1f} GB available; set data.cache: none"
        )
    return MemoryCache(images, side).build(workers, progress)
