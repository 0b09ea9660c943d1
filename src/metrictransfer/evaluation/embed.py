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
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from metrictransfer.data.multiview import collate_readable


@torch.inference_mode()
def extract_embeddings(
    model: nn.Module,
    dataset: Dataset[Any],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "embed",
    return_indices: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Embeddings (N × D, float32 on the CPU) and labels (N,) of a dataset yielding ``(views, label, index)``
    with a single view per item; with ``return_indices`` also the dataset index of each row.

    Items the dataset skips (unreadable images, returned as ``None``) have no row, hence the indices.
    """
    was_training = model.training
    model.eval()
    pin = torch.device(device).type == "cuda"
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_readable, pin_memory=pin)
    embeddings, labels, indices = [], [], []
    for views, batch_labels, batch_indices in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
        embeddings.append(model(views[:, 0].to(device, non_blocking=pin)).float().cpu())
        labels.append(batch_labels)
        indices.append(batch_indices)
    model.train(was_training)
    out = (torch.cat(embeddings), torch.cat(labels))
    return out + (torch.cat(indices),) if return_indices else out
