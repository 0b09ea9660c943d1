"""Dataset wrapper that applies transforms: V independent views of each image."""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, Callable, NamedTuple, Sequence, cast

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from metrictransfer.errors import DataError


class SeededItem(NamedTuple):
    """A training item key: the image's index and the epoch. Its augmentation is drawn from a random
    generator seeded by (run seed, epoch, index) alone, so the views do not depend on which process or
    data-loader worker decodes the image, nor on where a resumed run starts."""

    index: int  # type: ignore[assignment]  # a field named like tuple.index, which it shadows
    epoch: int


def item_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed % 2**32, epoch, index]).generate_state(1, np.uint64)[0] >> 1)


class MultiViewDataset(Dataset[Any]):
    """Returns ``(views, label, index)`` with ``views`` of shape (V, C, H, W), each an independent draw.

    Decoding happens once per image; the V augmentations are applied to the same decoded image, so the
    source and the target (and cohort members) can be fed exactly the same views. V = 1 with the test
    transform is the evaluation dataset. Given a list of T transforms, each makes V views: (T·V, C, H, W),
    transform-major (a cohort's per-member views of the one decoded image).
    """

    def __init__(
        self, dataset: Dataset[Any], transform: Callable[..., Any] | Sequence[Callable[..., Any]], views: int = 1, seed: int = 0
    ) -> None:
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.dataset = dataset
        self.transforms: list[Callable[..., Any]] = (
            list(transform) if isinstance(transform, (list, tuple)) else [cast(Callable[..., Any], transform)]
        )
        if not self.transforms:
            raise ValueError("MultiViewDataset needs at least one transform")
        self.transform = self.transforms[0]
        self.views = views
        self.seed = seed

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))

    def __getitem__(self, key: int | SeededItem) -> tuple[torch.Tensor, int, int] | None:
        if isinstance(key, SeededItem):
            with torch.random.fork_rng(devices=[]):  # leaves the caller's random stream untouched
                torch.manual_seed(item_seed(self.seed, key.epoch, key.index))
                return self._views(key.index)
        return self._views(key)

    def _views(self, index: int) -> tuple[torch.Tensor, int, int] | None:
        item = self.dataset[index]
        if item is None:  # an unreadable image the dataset was told to skip
            return None
        image, label = item
        return torch.stack([t(image) for t in self.transforms for _ in range(self.views)]), int(label), index


def collate_readable(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Default collation of the items that could be read (skipped images come as ``None``)."""
    kept = [item for item in batch if item is not None]
    if not kept:
        raise DataError(f"every image of a batch of {len(batch)} was unreadable; check the dataset files")
    return cast(tuple[torch.Tensor, torch.Tensor, torch.Tensor], default_collate(kept))


def flatten_views(views: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V, C, H, W) images and (B,) labels → (B·V, C, H, W) and (B·V,), views of an image adjacent."""
    b, v = views.shape[:2]
    return views.reshape(b * v, *views.shape[2:]), labels.repeat_interleave(v)
