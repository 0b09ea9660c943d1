"""Embedding extraction over a dataset, batched, in eval mode, without gradient.

:func:`extract_embeddings` is the one function that embeds images: for the evaluation of training
epochs, the ``embed`` and ``evaluate`` commands (:func:`~metrictransfer.evaluation.evaluate.embed_split`),
index building and search, and reports; images get the test-time preprocessing from
:func:`~metrictransfer.evaluation.evaluate.with_test_transform`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from metrictransfer.data.protocol import RetrievalDataset
from metrictransfer.evaluation.kept_views import evaluation_batches


@torch.inference_mode()
def extract_embeddings(
    model: nn.Module,
    dataset: Dataset[Any] | RetrievalDataset,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "embed",
    return_indices: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Embeddings (N × D, float32 on the CPU) and labels (N,) of a dataset yielding ``(views, label, index)``
    with a single view per item; with ``return_indices`` also the dataset index of each row.

    Items the dataset skips (unreadable images, returned as ``None``) have no row, hence the indices. A
    :class:`~metrictransfer.evaluation.kept_views.KeptViews` set gives its kept views.
    """
    was_training = model.training
    model.eval()
    embeddings, labels, indices = [], [], []
    for images, batch_labels, batch_indices in evaluation_batches(dataset, batch_size, device, num_workers, progress, desc):
        embeddings.append(model(images).float().cpu())
        labels.append(batch_labels)
        indices.append(batch_indices)
    model.train(was_training)
    out = (torch.cat(embeddings), torch.cat(labels))
    return out + (torch.cat(indices),) if return_indices else out
