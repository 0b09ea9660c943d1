"""Embedding models."""

from metrictransfer.models.embedding import EmbeddingModel, load_backbone_weights

__all__ = ["EmbeddingModel", "load_backbone_weights"]
