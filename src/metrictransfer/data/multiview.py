"""Dataset wrapper that applies transforms: V independent views of each image."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence, cast

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from metrictransfer.data.protocol import DatasetWrapper, RetrievalDataset
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


class MultiViewDataset(DatasetWrapper, Dataset[Any]):
    """Returns ``(views, label, index)`` with ``views`` of shape (V, C, H, W), each an independent draw; its
    labels, item names and the rest are ``dataset``'s (:class:`~metrictransfer.data.protocol.DatasetWrapper`).

    Decoding happens once per image; the V augmentations are applied to the same decoded image, so the
    source and the target (and cohort members) can be fed exactly the same views. V = 1 with the test
    transform is the evaluation dataset. Given a list of T transforms, each makes V views: (T·V, C, H, W),
    transform-major (a cohort's per-member views of the one decoded image).

    ``finish=False``: where every transform splits (:func:`split_per_batch`), the views leave as uint8, their
    conversion and normalisation left to the consumer (:func:`finish_views`, on the device): a quarter of
    the bytes through the workers' queues and the host-to-device copy, and no float work in the workers.
    """

    def __init__(
        self,
        dataset: RetrievalDataset,
        transform: Callable[..., Any] | Sequence[Callable[..., Any]],
        views: int = 1,
        seed: int = 0,
        finish: bool = True,
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
        self.finish = finish
        # each transform as (per-image part, per-batch tail) when all of them split, else None: per item
        splits = [split_per_batch(t) for t in self.transforms]
        self._splits = None if any(split is None for split in splits) else cast(list[tuple[Callable[..., Any], Callable[..., Any]]], splits)

    def __len__(self) -> int:
        return len(self.dataset)

    def unfinished_tails(self) -> list[Callable[..., Any]] | None:
        """The tails the consumer must apply (:func:`finish_views`): each transform's, for ``finish=False``
        sets whose transforms split; None when the items come finished."""
        return None if self.finish or self._splits is None else [tail for _, tail in self._splits]

    def one_view_parts(self) -> tuple[Callable[..., Any], Callable[..., Any]] | None:
        """(per-image part, batch tail) of a one-view, one-transform set whose transform splits so (an
        evaluation set): its items before the tail are uint8 and can be kept; None for any other set."""
        if self._splits is None or len(self._splits) != 1 or self.views != 1:
            return None
        return self._splits[0]

    def __getitem__(self, key: int | SeededItem) -> tuple[torch.Tensor, int, int] | None:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: Sequence[int | SeededItem]) -> list[tuple[torch.Tensor, int, int] | None]:
        """The items of a batch (the data loader asks for a batch at once). Where every transform ends in
        elementwise conversion and normalisation (:func:`split_per_batch`), that part runs once on the
        batch, with the same numbers as per image."""
        return self._make(list(keys))

    def _make(self, keys: list[int | SeededItem]) -> list[tuple[torch.Tensor, int, int] | None]:
        if not keys or self._splits is None:
            return [self._seeded(key, lambda index: self._views(index, self.transforms)) for key in keys]
        heads = [head for head, _ in self._splits]
        if not self.finish:  # uint8 views, (T·V, C, H, W): the consumer finishes them
            return [self._seeded(key, lambda index: self._views(index, heads)) for key in keys]
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


def finish_views(views: torch.Tensor, tails: Sequence[Callable[..., Any]], per_transform: int) -> torch.Tensor:
    """(B, T·V, C, H, W) uint8 views of a ``finish=False`` :class:`MultiViewDataset` as float, each transform's
    tail on its ``per_transform`` views, wherever they are (the training device): the numbers the dataset
    would have given, since the tails are elementwise."""
    if len(tails) == 1:
        return cast(torch.Tensor, tails[0](views))
    chunks = [tail(views[:, k * per_transform : (k + 1) * per_transform]) for k, tail in enumerate(tails)]
    return torch.cat(chunks, dim=1)


def flatten_views(views: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V, C, H, W) images and (B,) labels → (B·V, C, H, W) and (B·V,), views of an image adjacent."""
    b, v = views.shape[:2]
    return views.reshape(b * v, *views.shape[2:]), labels.repeat_interleave(v)
