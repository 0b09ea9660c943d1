"""Embedding a dataset split with a trained run's model (for ``metrictransfer embed`` and ``evaluate``)."""

from __future__ import annotations

import numpy as np

from metrictransfer.config import RunConfig
from metrictransfer.data.multiview import MultiViewDataset
from metrictransfer.data.registry import build_dataset
from metrictransfer.data.transforms import build_transform
from metrictransfer.engine.trainer import resolve_device
from metrictransfer.evaluation import extract_embeddings
from metrictransfer.evaluation.embeddings_file import EmbeddingsFile
from metrictransfer.models import EmbeddingModel


def embed_split(
    model: EmbeddingModel,
    config: RunConfig,
    split: str = "test",
    device: str | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> EmbeddingsFile:
    """Embeddings, labels and item paths of one split of a run's dataset, with the test-time transform.

    Datasets without image files (the generated glyphs) name their items ``dataset:split:index``.
    """
    target = resolve_device(device or config.device)
    dataset = build_dataset(config.data, split)
    items = MultiViewDataset(dataset, build_transform(config.data.transform, False, config.data.image_size, config.data.normalization))
    embeddings, labels = extract_embeddings(
        model.to(target), items, batch_size or config.eval.batch_size, target, config.data.num_workers, progress=progress
    )
    paths = getattr(dataset, "paths", None)
    if paths is None:
        paths = [f"{config.data.dataset}:{split}:{i}" for i in range(len(dataset))]
    return EmbeddingsFile(embeddings.numpy(), labels.numpy(), np.asarray(paths, dtype=str), metric=config.eval.metric)
