"""Evaluation: exact retrieval metrics at any scale (blocked kNN), embedding extraction and files."""

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
