"""The same per-query statistics from a faiss exact kNN search (optional backend).

This is what other tools do: search a fixed number of sorted neighbours and read the metrics off the lists.
It is exact for Recall@K with K up to the number searched and for MAP@R, except that faiss orders tied
distances arbitrarily where the blocked engine (``knn.py``) counts ties against the query.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch

from metrictransfer.errors import MissingPackageError
from metrictransfer.evaluation.knn import QueryStats, prepare


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as err:  # optional dependency
        raise MissingPackageError("the faiss backend needs faiss: pip install faiss-cpu (or faiss-gpu)") from err
    return faiss


def flat_index(dim: int, metric: str) -> Any:
    """An exact faiss index: IndexFlatL2, or for cosine (on unit-length vectors) IndexFlatIP."""
    faiss = _faiss()
    return faiss.IndexFlatL2(dim) if metric == "euclidean" else faiss.IndexFlatIP(dim)


def search(queries: np.ndarray, gallery: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Indices (Q × k) of the k nearest gallery items of each query, by IndexFlatL2 or, for cosine, IndexFlatIP."""
    index = flat_index(gallery.shape[1], metric)
    index.add(np.ascontiguousarray(gallery, dtype=np.float32))
    _, neighbours = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return cast(np.ndarray, neighbours)


def faiss_query_statistics(
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    gallery: torch.Tensor | None = None,
    gallery_labels: torch.Tensor | None = None,
    metric: str = "euclidean",
    max_k: int = 1,
) -> QueryStats:
    """Per-query statistics from the ``max(max_k, largest R)`` nearest neighbours found by faiss.

    A query whose nearest positive is not among them gets rank = number searched (a miss for every K
    up to that number).
    """
    same_set = gallery is None
    q = prepare(queries, metric).cpu().numpy()
    g = q if gallery is None else prepare(gallery, metric).cpu().numpy()
    q_lab = query_labels.cpu().numpy()
    if gallery is None:
        g_lab = q_lab
    elif gallery_labels is None:
        raise ValueError("faiss_query_statistics: a gallery needs its gallery_labels")
    else:
        g_lab = gallery_labels.cpu().numpy()
    classes, g_counts = np.unique(g_lab, return_counts=True)
    count_of = dict(zip(classes.tolist(), g_counts.tolist()))
    positives = np.array([count_of.get(c, 0) for c in q_lab.tolist()], dtype=np.int64) - int(same_set)
    k = min(len(g) - int(same_set), max(max_k, int(positives.max(initial=0))))
    neighbours = search(q, g, k + int(same_set), metric)
    if same_set:  # drop the query itself by its index (or the last neighbour when the query is not listed)
        is_self = neighbours == np.arange(len(q))[:, None]
        keep = ~is_self
        keep[~is_self.any(1), -1] = False
        neighbours = neighbours[keep].reshape(len(q), k)
    relevant = g_lab[neighbours] == q_lab[:, None]
    first = np.where(relevant.any(1), relevant.argmax(1), k)
    rank = np.where(positives > 0, first, -1)
    ap = np.full(len(q), np.nan)
    rp = np.full(len(q), np.nan)
    for r in np.unique(positives[positives > 0]):
        rows = positives == r
        hits = relevant[rows, :r]
        precision = np.cumsum(hits, 1) / np.arange(1, r + 1)
        ap[rows] = (precision * hits).sum(1) / r
        rp[rows] = hits.sum(1) / r
    return QueryStats(
        positives=torch.from_numpy(positives),
        rank=torch.from_numpy(rank),
        average_precision=torch.from_numpy(ap),
        r_precision=torch.from_numpy(rp),
    )
