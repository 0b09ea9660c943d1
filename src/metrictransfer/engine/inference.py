"""Embedding a dataset split with a trained run's model (for ``metrictransfer embed`` and ``evaluate``)."""

from __future__ import annotations

import numpy as np

from metrictransfer.config import RunConfig
from metrictransfer.data.multiview import MultiViewDataset
from metrictransfer.data.registry import build_dataset
from metrictransfer.data.transforms import build_transform
from metrictransfer.evaluation import extract_embeddings
from metrictransfer.evaluation.embeddings_file import EmbeddingsFile
from metrictransfer.models import EmbeddingModel
from metrictransfer.runtime.device import resolve_device


def embed_split(
    model: EmbeddingModel,
    config: RunConfig,
    split: str = "test",
    device: str | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> EmbeddingsFile:
    """Embeddings, labels and item names of one split of a run's dataset, with the test-time transform.

    The file records the dataset, the split and each row's item name (the image path relative to the
    dataset root; for the generated glyphs, see :func:`~metrictransfer.data.registry.glyph_item_names`),
    so that it can be checked against the items it is later used with; ``paths`` are the image paths, or
    ``dataset:split:index``. Rows follow the dataset's order; images skipped as unreadable have no row.
    """
    target = resolve_device(device or config.device)
    dataset = build_dataset(config.data, split)
    items = MultiViewDataset(dataset, build_transform(config.data.transform, False, config.data.image_size, config.data.normalization))
    embeddings, labels, indices = extract_embeddings(
        model.to(target), items, batch_size or config.eval.batch_size, target, config.data.num_workers,
        progress=progress, return_indices=True,
    )
    rows = indices.numpy()
    paths = getattr(dataset, "paths", None)
    if paths is None:  # as files of earlier versions named glyphs; ``items`` identifies them fully
        paths = [f"{config.data.dataset}:{split}:{i}" for i in range(len(dataset))]
    masks = {key: np.asarray(getattr(dataset, key))[rows] for key in ("is_query", "is_gallery")
             if getattr(dataset, key, None) is not None}
    return EmbeddingsFile(
        embeddings.numpy(), labels.numpy(),
        paths=np.asarray(paths, dtype=str)[rows],
        metric=config.eval.metric,
        items=np.asarray(dataset.item_names, dtype=str)[rows],
        dataset=config.data.dataset,
        split=split,
        **masks,
    )
