"""Pairwise distances shared by the relational losses."""

from __future__ import annotations

import torch


def pairwise_distances(x: torch.Tensor, squared: bool = False, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distance matrix (N × N) of the rows of ``x`` with an exactly zero diagonal.

    Computed from Gram products so memory stays O(N²) (never N × N × D). Squared distances are
    clamped at ``eps`` before the square root so the gradient is finite, and the diagonal is
    replaced by an exact zero (its gradient is zero, as for ``torch.cdist``).
    """
    if x.dim() != 2:
        raise ValueError(f"expected a 2-D tensor of embeddings (N × D), got shape {tuple(x.shape)}")
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    sq_norms = x.pow(2).sum(dim=1)
    sq = (sq_norms.unsqueeze(1) + sq_norms.unsqueeze(0) - 2.0 * (x @ x.t())).clamp(min=eps)
    dist = sq if squared else sq.sqrt()
    off_diagonal = ~torch.eye(len(x), dtype=torch.bool, device=x.device)
    return dist * off_diagonal
