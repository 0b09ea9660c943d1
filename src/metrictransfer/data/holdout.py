"""Held-out images of the training classes (for classifiers, whose test images share their classes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from metrictransfer.data.protocol import RetrievalDataset


class LabelledSubset(Dataset[Any]):
    """Some items of a dataset, with its :class:`~metrictransfer.data.protocol.RetrievalDataset` attributes
    for these items (``labels``, ``item_names``, ``is_query`` / ``is_gallery``) and its split's (``classes``,
    ``split``, ``dataset_name``, ``root``), for samplers and for checking files of embeddings against it.

    ``relabel``: number the subset's classes 0..C'-1 (items and ``labels`` alike, ``classes`` following),
    for a subset of whole classes that a model trains on: a proxy loss sized to every class of the split
    would keep proxies that no image pulls on."""

    def __init__(self, dataset: RetrievalDataset, indices: np.ndarray, relabel: bool = False) -> None:
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)
        self.labels: np.ndarray = np.asarray(dataset.labels)[self.indices]
        self.label_map: dict[int, int] | None = None
        classes = dataset.classes
        if relabel:
            kept = np.unique(self.labels[self.labels >= 0])
            self.label_map = {int(old): new for new, old in enumerate(kept)}
            self.labels = np.array([self.label_map.get(int(label), int(label)) for label in self.labels], dtype=np.int64)
            classes = None if classes is None else [classes[int(old)] for old in kept]
        self.classes: Sequence[str] | None = classes
        self.item_names: list[str] = [dataset.item_names[i] for i in self.indices.tolist()]
        self.is_query, self.is_gallery = (self._rows(mask) for mask in (dataset.is_query, dataset.is_gallery))
        self.dataset_name: str | None = dataset.dataset_name
        self.split: str | None = dataset.split
        self.root: Path | None = dataset.root

    def _rows(self, mask: np.ndarray | None) -> np.ndarray | None:
        return None if mask is None else np.asarray(mask)[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        item = self.dataset[int(self.indices[i])]
        if item is None or self.label_map is None:
            return item
        image, label = item
        return image, self.label_map.get(int(label), int(label))


def split_holdout(dataset: RetrievalDataset, fraction: float, seed: int = 0) -> tuple[LabelledSubset, LabelledSubset]:
    """(training images, held-out images): about ``fraction`` of each class held out (at least one image
    for classes of two or more). The split depends only on ``seed``, not on the run's seed, so runs that
    are compared are evaluated on the same images."""
    labels = np.asarray(dataset.labels)
    rng = np.random.default_rng(seed)
    fit: list[int] = []
    held: list[int] = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_held = max(1, round(fraction * len(members))) if len(members) >= 2 else 0
        held.extend(members[:n_held])
        fit.extend(members[n_held:])
    return LabelledSubset(dataset, np.sort(fit)), LabelledSubset(dataset, np.sort(held))
