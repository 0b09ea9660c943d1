"""Embedding extraction over a dataset, batched, in eval mode, without gradient."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm


@torch.inference_mode()
def extract_embeddings(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    progress: bool = False,
    desc: str = "embed",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (N × D, float32 on the CPU) and labels (N,) of a dataset yielding ``(views, label, index)``
    with a single view per item."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    embeddings, labels = [], []
    for views, batch_labels, _ in tqdm(loader, desc=desc, disable=not progress, leave=False):
        embeddings.append(model(views[:, 0].to(device)).float().cpu())
        labels.append(batch_labels)
    model.train(was_training)
    return torch.cat(embeddings), torch.cat(labels)
