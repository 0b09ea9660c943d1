"""Evaluation: exact chunked kNN retrieval metrics and embedding extraction."""

from metrictransfer.evaluation.embed import extract_embeddings
from metrictransfer.evaluation.retrieval import nearest_positive_ranks, recall_at_k

__all__ = ["extract_embeddings", "nearest_positive_ranks", "recall_at_k"]
