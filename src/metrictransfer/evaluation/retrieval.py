"""Recall@K in the metric-learning sense, from exact kNN computed in chunks of queries.

Recall@K needs neither a sorted neighbour list nor an N × N matrix: a query is a hit at K when fewer
than K items of other classes are at least as close as its nearest same-class item. Each chunk of
queries costs one matrix product against all items, so memory is O(chunk · N).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _distances(queries: torch.Tensor, items: torch.Tensor, metric: str, item_sq_norms: torch.Tensor | None) -> torch.Tensor:
    if metric == "cosine":
        return 1.0 - queries @ items.t()
    q_sq = queries.pow(2).sum(dim=1, keepdim=True)
    return (q_sq + item_sq_norms.unsqueeze(0) - 2.0 * queries @ items.t()).clamp_(min=0)


def nearest_positive_ranks(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    metric: str = "euclidean",
    chunk_size: int = 1024,
) -> torch.Tensor:
    """For each item (as a query against all others), the number of other-class items at least as close
    as its nearest same-class item; -1 for a query whose class has no other item.

    The query is excluded by its index, never by assuming it is its own first neighbour. Ties with a
    different-class item count against the query (the pessimistic reading of a tie).
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"unknown metric {metric!r}; valid: euclidean, cosine")
    if embeddings.dim() != 2 or labels.dim() != 1 or len(embeddings) != len(labels):
        raise ValueError(
            f"expected embeddings (N × D) and labels (N,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}"
        )
    x = embeddings.float()
    if metric == "cosine":
        x = F.normalize(x, dim=1)
    sq_norms = x.pow(2).sum(dim=1) if metric == "euclidean" else None
    labels = labels.to(x.device)
    ranks = torch.empty(len(x), dtype=torch.long, device=x.device)
    for start in range(0, len(x), chunk_size):
        stop = min(start + chunk_size, len(x))
        dist = _distances(x[start:stop], x, metric, sq_norms)
        rows = torch.arange(stop - start, device=x.device)
        dist[rows, rows + start] = float("inf")  # the query itself
        same = labels[start:stop].unsqueeze(1) == labels.unsqueeze(0)
        same[rows, rows + start] = False
        nearest_pos = dist.masked_fill(~same, float("inf")).amin(dim=1)
        ahead = ((dist <= nearest_pos.unsqueeze(1)) & ~same).sum(dim=1)
        ranks[start:stop] = torch.where(torch.isinf(nearest_pos), torch.full_like(ahead, -1), ahead)
    return ranks.cpu()


def recall_at_k(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    ks: list[int] | tuple[int, ...] = (1, 2, 4, 8),
    metric: str = "euclidean",
    chunk_size: int = 1024,
) -> dict[str, float]:
    """``{"recall@k": fraction of queries with a same-class item among their k nearest neighbours}``.

    Queries whose class has no other item cannot be hit and are left out of the fraction.
    """
    ranks = nearest_positive_ranks(embeddings, labels, metric, chunk_size)
    valid = ranks >= 0
    if not valid.any():
        raise ValueError("no query has a same-class item: Recall@K is undefined")
    return {f"recall@{k}": float((ranks[valid] < k).double().mean()) for k in ks}
