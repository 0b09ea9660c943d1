"""Held-out images of the training classes (for classifiers, whose test images share their classes)."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset


class LabelledSubset(Dataset[Any]):
    """Some items of a dataset, keeping its ``labels`` (and ``paths``, ``item_names``, ``dataset_name``,
    ``split``) attributes for samplers and for checking files of embeddings against it.

    ``relabel``: number the subset's classes 0..C'-1 (items and ``labels`` alike, ``classes`` following),
    for a subset of whole classes that a model trains on: a proxy loss sized to every class of the split
    would keep proxies that no image pulls on."""

    def __init__(self, dataset: Any, indices: np.ndarray, relabel: bool = False) -> None:  # a dataset with labels
        self.dataset, self.indices = dataset, np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(dataset.labels)[self.indices]
        self.label_map: dict[int, int] | None = None
        classes = getattr(dataset, "classes", None)
        if relabel:
            kept = np.unique(self.labels[self.labels >= 0])
            self.label_map = {int(old): new for new, old in enumerate(kept)}
            self.labels = np.array([self.label_map.get(int(label), int(label)) for label in self.labels], dtype=np.int64)
            classes = None if classes is None else [classes[int(old)] for old in kept]
        self.classes = classes
        for key in ("paths", "item_names"):
            values = getattr(dataset, key, None)
            setattr(self, key, None if values is None else [values[i] for i in self.indices])
        self.dataset_name = getattr(dataset, "dataset_name", None)
        self.split = getattr(dataset, "split", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        item = self.dataset[int(self.indices[i])]
        if item is None or self.label_map is None:
            return item
        image, label = item
        return image, self.label_map.get(int(label), int(label))


def split_holdout(dataset: Any, fraction: float, seed: int = 0) -> tuple[LabelledSubset, LabelledSubset]:
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
