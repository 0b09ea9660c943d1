"""Embedding models."""

from metrictransfer.models import bn_inception  # noqa: F401  (registers the timm model "bn_inception")
from metrictransfer.models.embedding import EmbeddingModel, load_backbone_weights

__all__ = ["EmbeddingModel", "load_backbone_weights"]
