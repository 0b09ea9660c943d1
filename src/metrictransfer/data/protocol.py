"""What every dataset gives: :class:`RetrievalDataset`, the contract between the datasets (what
:func:`~metrictransfer.data.registry.build_dataset` returns, and the wrappers around it) and the code that
reads them: training, evaluation, files of embeddings, checkpoints' provenance, reports.

Without torch: reading annotation files (``data inspect``) imports this module too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["DatasetWrapper", "RetrievalDataset", "builder_dataset", "query_gallery"]


class RetrievalDataset(Protocol):
    """One split of a dataset: ``len(dataset)`` items, item ``i`` at ``dataset[i]`` (``(PIL image, label)``
    as :func:`~metrictransfer.data.registry.build_dataset` returns it; a wrapper's own items otherwise).

    Per item, in item order:

    - ``labels``: an integer array, 0-based within the split; negative for an unlabelled item.
    - ``item_names``: each item's name, unique in the split and stable: the image's path relative to
      ``root`` for images in files, a generated name (one that changes whenever the item would be another
      image) for generated data. Files of embeddings and checkpoints' provenance name items by it.
    - ``is_query``, ``is_gallery``: boolean arrays for data evaluated query against gallery (In-Shop's test
      split), else None.

    For the split:

    - ``classes``: the class name of each label (``classes[label]``), or None where the data names none.
    - ``split``, ``dataset_name``: the split's name and the recipe's ``data.dataset``; None for images of
      no dataset (a folder embedded or indexed outside any recipe).
    - ``root``: the folder of the items' files (item ``i`` is the file ``root / item_names[i]``); None where
      the items are no files (generated data).

    The wrappers (held-out and validation subsets, training and evaluation views, kept views, the memory
    cache) give the same for the items they hold, so no caller looks through a wrapper's ``.dataset``.
    """

    @property
    def labels(self) -> np.ndarray: ...

    @property
    def item_names(self) -> Sequence[str]: ...

    @property
    def classes(self) -> Sequence[str] | None: ...

    @property
    def split(self) -> str | None: ...

    @property
    def dataset_name(self) -> str | None: ...

    @property
    def is_query(self) -> np.ndarray | None: ...

    @property
    def is_gallery(self) -> np.ndarray | None: ...

    @property
    def root(self) -> Path | None: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> Any: ...


class DatasetWrapper:
    """Base of a wrapper whose item ``i`` is made from item ``i`` of ``self.dataset`` (views of it, a kept
    copy of it): the :class:`RetrievalDataset` attributes are the wrapped dataset's."""

    dataset: RetrievalDataset

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels

    @property
    def item_names(self) -> Sequence[str]:
        return self.dataset.item_names

    @property
    def classes(self) -> Sequence[str] | None:
        return self.dataset.classes

    @property
    def split(self) -> str | None:
        return self.dataset.split

    @property
    def dataset_name(self) -> str | None:
        return self.dataset.dataset_name

    @property
    def is_query(self) -> np.ndarray | None:
        return self.dataset.is_query

    @property
    def is_gallery(self) -> np.ndarray | None:
        return self.dataset.is_gallery

    @property
    def root(self) -> Path | None:
        return self.dataset.root


def query_gallery(dataset: RetrievalDataset) -> dict[str, np.ndarray]:
    """``{"is_query": ..., "is_gallery": ...}`` of query-against-gallery data; empty for other data."""
    if dataset.is_query is None or dataset.is_gallery is None:
        return {}
    return {"is_query": np.asarray(dataset.is_query), "is_gallery": np.asarray(dataset.is_gallery)}


#: The optional attributes, and their values where a builder's dataset lacks them.
OPTIONAL: dict[str, None] = {"classes": None, "is_query": None, "is_gallery": None, "root": None}


def builder_dataset(dataset: Any, name: str, split: str) -> RetrievalDataset:
    """What a ``builder=True`` dataset's function returned, named ``name`` and ``split``, as a
    :class:`RetrievalDataset`. A plug-in's builder may come from before the protocol and leave out its
    optional attributes, which get their defaults (:data:`OPTIONAL`; the one place that looks for
    attributes); one without ``labels`` or ``item_names`` is refused, as nothing could check its items."""
    lacking = [key for key in ("labels", "item_names") if getattr(dataset, key, None) is None]
    if lacking:
        raise TypeError(
            f"dataset {name!r}: its builder returned a {type(dataset).__name__} without {' and '.join(lacking)}; "
            "a builder's dataset needs labels (one integer per item) and item_names (one stable, unique name per item)"
        )
    for key, default in OPTIONAL.items():
        if not hasattr(dataset, key):
            setattr(dataset, key, default)
    dataset.dataset_name, dataset.split = name, split
    checked: RetrievalDataset = dataset
    return checked
