"""Evaluation views made once and kept: the test (or validation) images decoded, resized and cropped by the
test transform a single time, held as uint8 on the device or in (pinned) host memory, and converted and
normalised on the device at each evaluation.

Why: the test transform is deterministic, yet every epoch's evaluation decoded every test JPEG again. On an
H100 that was 0.58 h of a 0.80 h CUB Table 1 cell (benchmarks/results/gpu_smoke.md). The kept views give the
very numbers of a fresh decode: the conversion and normalisation are elementwise, the batches are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from metrictransfer.data.cache import HOST_SHARE, available_host_bytes  # else host memory, within this share
from metrictransfer.data.multiview import MultiViewDataset, collate_readable
from metrictransfer.data.protocol import DatasetWrapper, RetrievalDataset
from metrictransfer.data.workers import loader_workers

#: Kept on the device when the views take at most this share of its free memory (training needs the rest).
DEVICE_SHARE = 0.25
#: Images decoded per batch while the views are made.
BUILD_BATCH = 64


def placement(size: int, budget: int, device: torch.device) -> str | None:
    """Where ``size`` bytes of views are kept: "device", "host", or None (decoded at every evaluation)."""
    if size > budget:
        return None
    if device.type == "cuda" and size <= DEVICE_SHARE * torch.cuda.mem_get_info(device)[0]:
        return "device"
    return "host" if size <= HOST_SHARE * available_host_bytes() else None


class KeptViews(DatasetWrapper, Dataset[Any]):
    """An evaluation set (a one-view :class:`MultiViewDataset`) whose views are made at the first
    :meth:`batches` and kept, within ``budget`` bytes, as uint8; :meth:`batches` then converts and normalises
    them on the device. Over the budget, or where memory is short, it decodes every time, as before.

    ``positions``: the items of ``views`` it holds (a process's share under torchrun; all by default), whose
    labels, item names and query/gallery masks it gives. ``say`` is told once where the views are kept and
    their size."""

    dataset: MultiViewDataset

    def __init__(
        self,
        views: MultiViewDataset,
        budget: int,
        positions: Sequence[int] | None = None,
        say: Callable[[str], None] | None = None,
        name: str = "evaluation",
    ) -> None:
        parts = views.one_view_parts()
        if parts is None:
            raise ValueError("KeptViews needs a one-view evaluation set whose transform ends in ToImage and elementwise steps")
        self.tail = parts[1]
        self.dataset = views
        self.budget = budget
        self.positions = list(range(len(views))) if positions is None else list(positions)
        self.whole = positions is None  # every item of views, in order
        self.say = say
        self.name = name
        self.store: torch.Tensor | None = None  # (rows, C, H, W) uint8 of the readable items
        self.slots = np.zeros(0, dtype=np.int64)  # for each kept row, its place in ``positions``
        self.kept_labels = torch.zeros(0, dtype=torch.long)
        self.kept_indices = torch.zeros(0, dtype=torch.long)
        self.where: str | None = None
        self.made = False
        self._parts: dict[tuple[int, int], KeptViews] = {}

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int] | None:
        return self.dataset[self.positions[i]]

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels if self.whole else np.asarray(self.dataset.labels)[self.positions]

    @property
    def item_names(self) -> Sequence[str]:
        names = self.dataset.item_names
        return names if self.whole else [names[i] for i in self.positions]

    @property
    def is_query(self) -> np.ndarray | None:
        mask = self.dataset.is_query
        return mask if self.whole or mask is None else np.asarray(mask)[self.positions]

    @property
    def is_gallery(self) -> np.ndarray | None:
        mask = self.dataset.is_gallery
        return mask if self.whole or mask is None else np.asarray(mask)[self.positions]

    def part(self, rank: int, world: int) -> KeptViews:
        """Every ``world``-th item from ``rank`` (a process's share of the evaluation), kept on its own."""
        key = (rank, world)
        if key not in self._parts:
            self._parts[key] = KeptViews(self.dataset, self.budget, self.positions[rank::world], self.say, self.name)
        return self._parts[key]

    def batches(
        self, batch_size: int, device: torch.device, num_workers: int = 0, progress: bool = False, desc: str = "embed"
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(images on the device, labels, indices)`` per batch of ``batch_size`` positions (unreadable items
        dropped), as a data loader over this set gives them, the images converted and normalised."""
        if not self.made:
            self._make(device, num_workers, progress)
        if self.store is None:
            yield from loader_batches(self, batch_size, device, num_workers, progress, desc)
            return
        starts = range(0, len(self.positions), batch_size)
        for start in tqdm(starts, desc=desc, disable=not progress, leave=False, unit="batch"):
            a, b = np.searchsorted(self.slots, [start, start + batch_size])
            if a == b:
                continue
            pixels = self.store[a:b].to(device, non_blocking=True)
            yield self.tail(pixels), self.kept_labels[a:b], self.kept_indices[a:b]

    def _make(self, device: torch.device, num_workers: int, progress: bool) -> None:
        """Decode every item once into the store, placed by the size the first batch shows (:func:`placement`)."""
        self.made = True
        store: torch.Tensor | None = None
        shape: tuple[int, ...] = ()
        slots, labels, indices, rows = [], [], [], 0
        unfinished = MultiViewDataset(self.dataset.dataset, self.dataset.transform, finish=False)  # the same items, uint8
        loader = DataLoader(
            _Positions(unfinished, self.positions),
            batch_size=BUILD_BATCH,
            num_workers=loader_workers(num_workers),
            collate_fn=_collate_with_slots,
        )
        for batch in tqdm(loader, desc=f"keeping {self.name} views", disable=not progress, leave=False, unit="batch"):
            if batch is None:
                continue
            views, batch_labels, batch_indices, batch_slots = batch
            if store is None:
                shape = tuple(views.shape[2:])
                store = self._allocate(shape, device)
                if store is None:
                    return
            elif tuple(views.shape[2:]) != shape:  # a transform that does not make one size: nothing kept
                self.where = None
                return self._tell(f"not kept: its views differ in size ({shape} and {tuple(views.shape[2:])}); decoded at every evaluation")
            store[rows : rows + len(views)] = views[:, 0].to(store.device)
            rows += len(views)
            slots.append(batch_slots)
            labels.append(batch_labels)
            indices.append(batch_indices)
        if store is None:
            return self._tell("not kept: none of its images could be read")
        self.store = store[:rows]
        self.slots = torch.cat(slots).numpy()
        self.kept_labels, self.kept_indices = torch.cat(labels), torch.cat(indices)
        at_name = f"on {device}" if self.where == "device" else ("in pinned host memory" if store.is_pinned() else "in host memory")
        size_name = f"{self.store.nbytes / 1e9:.2f} GB" if self.store.nbytes >= 1e8 else f"{self.store.nbytes / 1e6:.1f} MB"
        shown = " × ".join(map(str, shape))
        self._tell(f"kept {at_name}: {rows:,} images of {shown} ({size_name} of uint8), converted and normalised at each evaluation")

    def _allocate(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
        """Room for every item's view of ``shape`` where :func:`placement` puts it; None (and said) where nowhere."""
        size = len(self.positions) * int(np.prod(shape))
        self.where = placement(size, self.budget, device)
        if self.where is None:
            budget = f"eval.keep_views_gb: {self.budget / 1e9:g}"
            too_big = f"{size / 1e9:.2f} GB of views is more than {budget} or than the memory free for it"
            self._tell(f"not kept: {too_big}; decoded at every evaluation")
            return None
        at = device if self.where == "device" else torch.device("cpu")
        pinned = self.where == "host" and device.type == "cuda"  # copied to the device asynchronously
        return torch.empty((len(self.positions), *shape), dtype=torch.uint8, device=at, pin_memory=pinned)

    def _tell(self, what: str) -> None:
        if self.say is not None:
            self.say(f"{self.name} views {what}")


class _Positions(Dataset[Any]):
    """Items ``positions`` of ``views``, each with its place in ``positions``."""

    def __init__(self, views: MultiViewDataset, positions: list[int]) -> None:
        self.views, self.positions = views, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitems__(self, slots: list[int]) -> list[Any]:
        items = self.views.__getitems__([self.positions[s] for s in slots])
        return [None if item is None else (*item, slot) for item, slot in zip(items, slots)]


def _collate_with_slots(batch: list[Any]) -> tuple[torch.Tensor, ...] | None:
    kept = [item for item in batch if item is not None]
    if not kept:
        return None
    return cast(tuple[torch.Tensor, ...], torch.utils.data.default_collate(kept))


def loader_batches(
    dataset: Dataset[Any] | RetrievalDataset,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "embed",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(images on the device, labels, indices)`` per batch of an evaluation set yielding ``(views, label,
    index)`` with one view, decoded by a data loader (unreadable images dropped)."""
    pin = device.type == "cuda"
    workers = loader_workers(num_workers)
    # any object with __len__ and __getitem__ loads; torch's annotations name its Dataset class
    loader = DataLoader(
        cast("Dataset[Any]", dataset),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_readable,
        pin_memory=pin,
    )
    for views, labels, indices in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
        yield views[:, 0].to(device, non_blocking=pin), labels, indices


def evaluation_batches(
    dataset: Dataset[Any] | RetrievalDataset,
    batch_size: int,
    device: torch.device | str,
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "embed",
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The batches of any evaluation set: kept views where it keeps them, else a data loader's."""
    device = torch.device(device)
    if isinstance(dataset, KeptViews):
        return dataset.batches(batch_size, device, num_workers, progress, desc)
    return loader_batches(dataset, batch_size, device, num_workers, progress, desc)


def keep_views(
    dataset: RetrievalDataset | None, budget_gb: float, say: Callable[[str], None] | None = None, name: str = "evaluation"
) -> RetrievalDataset | None:
    """``dataset`` as :class:`KeptViews` where it can be kept (a one-view evaluation set of a splitting
    transform, a budget above 0), else unchanged."""
    if budget_gb <= 0 or not isinstance(dataset, MultiViewDataset) or dataset.one_view_parts() is None:
        return dataset
    if len(dataset) == 0:
        return dataset
    return KeptViews(dataset, int(budget_gb * 1e9), say=say, name=name)
