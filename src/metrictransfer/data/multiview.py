"""Dataset wrapper that applies transforms: V independent views of each image."""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, Callable, NamedTuple, Sequence, cast

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from metrictransfer.data.transforms import split_per_batch
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
        # each transform as (per-image part, per-batch tail) when all of them split, else None: per item
        splits = [split_per_batch(t) for t in self.transforms]
        self._splits = None if any(split is None for split in splits) else cast(list[tuple[Callable[..., Any], Callable[..., Any]]], splits)
        self._memo: dict[int, tuple[torch.Tensor, int, int] | None] = {}
        self._memo_room = 0

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))

    def remember(self, limit_bytes: int) -> None:
        """Keep the items of plain (unseeded) keys once made, up to ``limit_bytes`` of views: for a set with a
        deterministic transform that is read every epoch (the test split, evaluated in the training process)."""
        self._memo_room = limit_bytes

    def __getitem__(self, key: int | SeededItem) -> tuple[torch.Tensor, int, int] | None:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[int | SeededItem]) -> list[tuple[torch.Tensor, int, int] | None]:
        """The items of a batch (the data loader asks for a batch at once). Where every transform ends in
        elementwise conversion and normalisation (:func:`split_per_batch`), that part runs once on the
        batch, with the same numbers as per image."""
        wanted = [key for key in keys if isinstance(key, SeededItem) or key not in self._memo]
        made = dict(zip(wanted, self._make(wanted)))
        for key in wanted:
            item = made[key]
            if not isinstance(key, SeededItem) and self._memo_room > 0:
                self._memo[key] = item
                self._memo_room -= 0 if item is None else item[0].element_size() * item[0].nelement()
        return [made[key] if key in made else self._memo[cast(int, key)] for key in keys]

    def _make(self, keys: list[int | SeededItem]) -> list[tuple[torch.Tensor, int, int] | None]:
        if not keys or self._splits is None:
            return [self._seeded(key, lambda index: self._views(index, self.transforms)) for key in keys]
        heads = [head for head, _ in self._splits]
        items = [self._seeded(key, lambda index: self._views(index, heads, stack=False)) for key in keys]
        readable = [item for item in items if item is not None]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, (views, *_) in enumerate(readable):
            by_shape.setdefault(tuple(views[0].shape), []).append(i)
        finished: list[torch.Tensor] = [torch.empty(0)] * len(readable)
        v = self.views
        for members in by_shape.values():  # each transform's tail once, on all views of one size
            done = []
            for k, (_, tail) in enumerate(self._splits):
                batch = torch.stack([readable[i][0][j] for i in members for j in range(k * v, (k + 1) * v)])
                done.append(tail(batch).view(len(members), v, *batch.shape[1:]))
            joined = torch.cat(done, dim=1)  # (items, T·V, C, H, W), transform-major
            for row, i in enumerate(members):
                finished[i] = joined[row]
        found = iter(finished)
        return [None if item is None else (next(found), item[1], item[2]) for item in items]

    def _seeded(self, key: int | SeededItem, make: Callable[[int], Any]) -> Any:
        if isinstance(key, SeededItem):
            with torch.random.fork_rng(devices=[]):  # leaves the caller's random stream untouched
                # the CPU generator alone, as torch.manual_seed seeds it (the same draws): torch.manual_seed
                # also queues a seed for each accelerator type, formatting a stack trace each time (0.2-0.8 ms)
                torch.default_generator.manual_seed(item_seed(self.seed, key.epoch, key.index))
                return make(key.index)
        return make(key)

    def _views(self, index: int, transforms: Sequence[Callable[..., Any]], stack: bool = True) -> Any:
        item = self.dataset[index]
        if item is None:  # an unreadable image the dataset was told to skip
            return None
        image, label = item
        views = [t(image) for t in transforms for _ in range(self.views)]
        return (torch.stack(views) if stack else views), int(label), index


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
