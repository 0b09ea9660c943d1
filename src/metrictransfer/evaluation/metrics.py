"""Retrieval metrics: Recall@K, MAP@R, R-Precision and NMI, all-vs-all or query-vs-gallery.

Definitions (the metric-learning ones):
- Recall@K: fraction of queries with at least one same-class item among their K nearest neighbours.
- MAP@R: with R the number of same-class items, the mean over queries of (1/R) Σ_{i ≤ R} P(i)·rel(i),
  where P(i) is the precision among the first i neighbours and rel(i) whether neighbour i is same-class.
- R-Precision: the fraction of same-class items among the R nearest neighbours.
- NMI: normalised mutual information between the classes and a k-means clustering of the embeddings
  (as many clusters as classes).

A query with no same-class item (R = 0: a class of one item, or a query class missing from the gallery)
can be neither hit nor ranked: it is left out of every mean. In all-vs-all mode a query is excluded from its
own neighbours by index. Ties between a same-class and an other-class item count against the query.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from metrictransfer.errors import ConfigError, DataError
from metrictransfer.evaluation.faiss_knn import faiss_query_statistics
from metrictransfer.evaluation.knn import QueryStats, query_statistics
from metrictransfer.registry import RETRIEVAL_METRICS, register_retrieval_metric

BACKENDS = ("torch", "faiss")


def as_tensor(values: torch.Tensor | npt.ArrayLike) -> torch.Tensor:
    return values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))


def check_embeddings(embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    """Raise ``ValueError`` naming what is wrong with an (embeddings, labels) pair."""
    if embeddings.dim() != 2:
        raise DataError(f"embeddings must be a 2-D array (N × D), got shape {tuple(embeddings.shape)}")
    if not (embeddings.is_floating_point()):
        raise DataError(f"embeddings must be floating point, got {embeddings.dtype}")
    if labels.dim() != 1:
        raise DataError(f"labels must be a 1-D array (N,), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise DataError(f"labels must be integers, got {labels.dtype}")
    if len(embeddings) != len(labels):
        raise DataError(f"mismatched lengths: {len(embeddings)} embeddings but {len(labels)} labels")
    if len(embeddings) < 2:
        raise DataError(f"retrieval needs at least 2 items, got {len(embeddings)}")
    bad_nan = torch.isnan(embeddings).any(1)
    bad_inf = torch.isinf(embeddings).any(1)
    if bad_nan.any() or bad_inf.any():
        first = torch.nonzero(bad_nan | bad_inf).squeeze(1)[:5].tolist()
        raise DataError(
            f"embeddings are not finite: {int(bad_nan.sum())} rows hold NaN and {int(bad_inf.sum())} rows hold "
            f"an infinite value (first rows: {first})"
        )


def query_gallery_split(
    is_query: torch.Tensor | npt.ArrayLike, is_gallery: torch.Tensor | npt.ArrayLike, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated boolean masks for query-vs-gallery evaluation."""
    masks = []
    for name, mask in (("is_query", is_query), ("is_gallery", is_gallery)):
        mask = as_tensor(mask)
        if mask.dtype != torch.bool or mask.shape != (n,):
            raise DataError(f"{name} must be a boolean array of length {n}, got {mask.dtype} of shape {tuple(mask.shape)}")
        if not mask.any():
            raise DataError(f"{name} selects no item")
        masks.append(mask)
    both = masks[0] & masks[1]
    if both.any():
        raise DataError(
            f"{int(both.sum())} items are both query and gallery (first: {torch.nonzero(both)[:5].squeeze(1).tolist()}); "
            "query-vs-gallery needs disjoint sets (use all-vs-all evaluation to search a set against itself)"
        )
    return masks[0], masks[1]


def compute_query_statistics(
    embeddings: torch.Tensor | npt.ArrayLike,
    labels: torch.Tensor | npt.ArrayLike,
    metric: str = "euclidean",
    *,
    is_query: torch.Tensor | npt.ArrayLike | None = None,
    is_gallery: torch.Tensor | npt.ArrayLike | None = None,
    backend: str = "torch",
    max_k: int = 1,
    block_size: int | None = None,
    progress: bool = False,
) -> QueryStats:
    """Validated per-query statistics (see ``knn.QueryStats``) by the chosen backend.

    ``max_k`` matters only to the faiss backend, which must know how many neighbours to search.
    """
    embeddings, labels = as_tensor(embeddings), as_tensor(labels)
    check_embeddings(embeddings, labels)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    labels = labels.long()
    queries, query_labels = embeddings, labels
    gallery: torch.Tensor | None = None
    gallery_labels: torch.Tensor | None = None
    if is_query is None and is_gallery is None:
        pass  # all-vs-all
    elif is_query is None or is_gallery is None:
        raise DataError("query-vs-gallery evaluation needs both is_query and is_gallery")
    else:
        q, g = query_gallery_split(is_query, is_gallery, len(labels))
        queries, query_labels = embeddings[q.to(embeddings.device)], labels[q]
        gallery, gallery_labels = embeddings[g.to(embeddings.device)], labels[g]
    if backend == "faiss":
        return faiss_query_statistics(queries, query_labels, gallery, gallery_labels, metric=metric, max_k=max_k)
    return query_statistics(queries, query_labels, gallery, gallery_labels, metric=metric, block_size=block_size, progress=progress)


def most_negatives(
    labels: torch.Tensor | npt.ArrayLike,
    is_query: torch.Tensor | npt.ArrayLike | None = None,
    is_gallery: torch.Tensor | npt.ArrayLike | None = None,
) -> int | None:
    """The most other-class items any query can rank before its first same-class one: its gallery less
    its class there (all-vs-all: the set less itself and its class). Recall@K for a larger K is 1.0 for
    every query whatever the embeddings, so it measures nothing. None when no query has a same-class
    item, or for masks that :func:`query_gallery_split` will refuse."""
    compact = np.unique(as_tensor(labels).cpu().numpy().reshape(-1), return_inverse=True)[1].reshape(-1)
    n = len(compact)
    if is_query is None or is_gallery is None:
        counts = np.bincount(compact)
        per_query = counts[compact]
        valid, negatives = per_query >= 2, n - per_query
    else:
        q, g = (as_tensor(m).cpu().numpy() for m in (is_query, is_gallery))
        if q.dtype != np.bool_ or g.dtype != np.bool_ or q.shape != (n,) or g.shape != (n,):
            return None
        in_gallery = np.bincount(compact[g], minlength=int(compact.max(initial=0)) + 1)[compact[q]]
        valid, negatives = in_gallery >= 1, int(g.sum()) - in_gallery
    return int(negatives[valid].max()) if valid.any() else None


def check_ranks(
    ks: Sequence[int],
    labels: torch.Tensor | npt.ArrayLike,
    is_query: torch.Tensor | npt.ArrayLike | None = None,
    is_gallery: torch.Tensor | npt.ArrayLike | None = None,
    *,
    setting: str = "K",
    where: str = "these items",
    advice: str = "",
) -> None:
    """Refuse a rank at which Recall@K would be 1.0 whatever the model (:func:`most_negatives`), naming
    ``setting`` (``eval.recall_at``, ``--k``) and ``where`` the items come from; ``advice`` replaces the
    default "use ranks of at most ..."."""
    most = most_negatives(labels, is_query, is_gallery)
    if most is None or max(ks) <= most:
        return
    k = min(k for k in ks if k > most)
    n = len(as_tensor(labels).reshape(-1))
    if most == 0:
        reason, fix = "every item is of one class", "evaluate on items of several classes"
    else:
        reason = f"no query has more than {most:,} items of another class to rank before a same-class one"
        fix = f"use ranks of at most {most:,}"
    raise ConfigError(
        f"{setting} {k} is more than {where} can answer ({n:,} items; {reason}): recall@{k} would be 1.0 whatever "
        f"the model; {advice or fix}"
    )


@register_retrieval_metric("recall", at_k=True)
def recall(stats: QueryStats, k: int) -> float:
    """Recall@K: the share of queries with a same-class item among their K nearest."""
    return float((stats.rank < k).double().mean())


@register_retrieval_metric("map@r")
def map_at_r(stats: QueryStats) -> float:
    """MAP@R: the mean over queries of the average precision within their R nearest (R: their positives)."""
    return float(stats.average_precision.mean())


@register_retrieval_metric("r_precision")
def r_precision(stats: QueryStats) -> float:
    """R-Precision: the mean share of same-class items among each query's R nearest."""
    return float(stats.r_precision.mean())


def summarize(stats: QueryStats, ks: Sequence[int]) -> dict[str, float]:
    """Every registered retrieval metric (``recall@k`` for each of ``ks``), as means over the queries that
    have at least one positive."""
    valid = stats.positives > 0
    if not valid.any():
        raise DataError("no query has a same-class item to retrieve: every class has a single item")
    kept = QueryStats(*(getattr(stats, f.name)[valid] for f in fields(QueryStats)))
    out: dict[str, float] = {}
    for name in sorted(RETRIEVAL_METRICS.names(), key=lambda n: not RETRIEVAL_METRICS.info(n, "at_k", False)):
        metric = RETRIEVAL_METRICS.get(name)
        if RETRIEVAL_METRICS.info(name, "at_k", False):
            out.update({f"{name}@{k}": metric(kept, k) for k in ks})
        else:
            out[name] = metric(kept)
    return out


def retrieval_metrics(
    embeddings: torch.Tensor | npt.ArrayLike,
    labels: torch.Tensor | npt.ArrayLike,
    ks: Sequence[int] = (1, 2, 4, 8),
    metric: str = "euclidean",
    *,
    is_query: torch.Tensor | npt.ArrayLike | None = None,
    is_gallery: torch.Tensor | npt.ArrayLike | None = None,
    nmi: bool = False,
    backend: str = "torch",
    block_size: int | None = None,
    progress: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """``{"recall@k": …, "map@r": …, "r_precision": …[, "nmi": …]}`` for all-vs-all retrieval, or for
    query-vs-gallery when the boolean masks ``is_query`` and ``is_gallery`` are given."""
    ks = list(ks)
    if not ks or any(int(k) < 1 for k in ks):
        raise ConfigError(f"K values must be positive integers, got {ks}")
    stats = compute_query_statistics(
        embeddings,
        labels,
        metric,
        is_query=is_query,
        is_gallery=is_gallery,
        backend=backend,
        max_k=max(ks),
        block_size=block_size,
        progress=progress,
    )
    # after the inputs' own checks (the command line and the trainer check the ranks before any work)
    check_ranks(ks, labels, is_query, is_gallery)  # a recall of 1.0 by construction is never reported
    out = summarize(stats, ks)
    if nmi:
        embeddings, labels = as_tensor(embeddings), as_tensor(labels)
        if is_query is not None and is_gallery is not None:  # both or neither (compute_query_statistics checked)
            used = as_tensor(is_query) | as_tensor(is_gallery)
            embeddings, labels = embeddings[used.to(embeddings.device)], labels[used]
        out["nmi"] = nmi_score(embeddings, labels, metric, seed)
    return out


def recall_at_k(
    embeddings: torch.Tensor | npt.ArrayLike,
    labels: torch.Tensor | npt.ArrayLike,
    ks: Sequence[int] = (1, 2, 4, 8),
    metric: str = "euclidean",
    block_size: int | None = None,
) -> dict[str, float]:
    """Only the ``recall@k`` entries of :func:`retrieval_metrics` (all-vs-all)."""
    metrics = retrieval_metrics(embeddings, labels, ks, metric, block_size=block_size)
    return {k: v for k, v in metrics.items() if k.startswith("recall@")}


def nearest_positive_ranks(
    embeddings: torch.Tensor | npt.ArrayLike, labels: torch.Tensor | npt.ArrayLike, metric: str = "euclidean", block_size: int | None = None
) -> torch.Tensor:
    """Per item: how many other-class items are at least as close as its nearest same-class item (-1: none)."""
    return compute_query_statistics(embeddings, labels, metric, block_size=block_size).rank


def nmi_score(
    embeddings: torch.Tensor | npt.ArrayLike, labels: torch.Tensor | npt.ArrayLike, metric: str = "euclidean", seed: int = 0
) -> float:
    """NMI between the labels and k-means clusters (as many as classes) of the embeddings.

    k-means is scikit-learn's (k-means++ seeding) up to 1,000 clusters; beyond that (SOP, In-Shop) it is
    faiss's when installed, since scikit-learn takes hours there. For cosine, embeddings are L2-normalised.
    """
    from sklearn.metrics import normalized_mutual_info_score

    t = as_tensor(embeddings).float()
    t = F.normalize(t, dim=1) if metric == "cosine" else t
    x = np.ascontiguousarray(t.cpu().numpy(), dtype=np.float32)
    y = as_tensor(labels).cpu().numpy()
    k = len(np.unique(y))
    faiss: Any
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is None or k <= 1000:
        from sklearn.cluster import KMeans

        clusters = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(x)
    else:
        kmeans = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, verbose=False)
        kmeans.train(x)
        clusters = kmeans.index.search(x, 1)[1][:, 0]
    return float(normalized_mutual_info_score(y, clusters))


def ensemble_embeddings(embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
    """The ensemble's embedding: each model's embedding L2-normalised, then concatenated."""
    if not embeddings:
        raise DataError("an ensemble needs at least one model's embeddings")
    lengths = {len(e) for e in embeddings}
    if len(lengths) != 1:
        raise DataError(f"every model must embed the same items; got lengths {sorted(lengths)}")
    return torch.cat([F.normalize(e.float(), dim=1) for e in embeddings], dim=1)
