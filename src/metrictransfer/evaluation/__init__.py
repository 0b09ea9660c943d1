"""Evaluation: exact retrieval metrics at any scale (blocked kNN), embedding extraction and files.

The names below are imported on first use: reading a file of embeddings (search) loads no PyTorch."""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from metrictransfer.evaluation.embed import extract_embeddings
    from metrictransfer.evaluation.knn import QueryStats, query_statistics
    from metrictransfer.evaluation.metrics import (
        compute_query_statistics,
        ensemble_embeddings,
        nearest_positive_ranks,
        nmi_score,
        recall_at_k,
        retrieval_metrics,
        summarize,
    )

_WHERE = {
    "extract_embeddings": "embed",
    "QueryStats": "knn",
    "query_statistics": "knn",
    **dict.fromkeys(
        [
            "compute_query_statistics",
            "ensemble_embeddings",
            "nearest_positive_ranks",
            "nmi_score",
            "recall_at_k",
            "retrieval_metrics",
            "summarize",
        ],
        "metrics",
    ),
}
__all__ = [
    "QueryStats",
    "compute_query_statistics",
    "ensemble_embeddings",
    "extract_embeddings",
    "nearest_positive_ranks",
    "nmi_score",
    "query_statistics",
    "recall_at_k",
    "retrieval_metrics",
    "summarize",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'metrictransfer.evaluation' has no attribute {name!r}")
    return getattr(import_module(f"metrictransfer.evaluation.{_WHERE[name]}"), name)
