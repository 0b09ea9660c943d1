"""Searching a gallery of images with a trained embedding model.

``build_index`` needs PyTorch and is imported on first use: searching an index does not load it."""

from typing import TYPE_CHECKING, Any

from metrictransfer.retrieval.gallery import Gallery, Neighbour, list_images

if TYPE_CHECKING:
    from metrictransfer.retrieval.build import build_index
    from metrictransfer.runtime.checkpoint import model_fingerprint

__all__ = ["Gallery", "Neighbour", "build_index", "list_images", "model_fingerprint"]


def __getattr__(name: str) -> Any:
    if name == "build_index":
        from metrictransfer.retrieval.build import build_index

        return build_index
    if name == "model_fingerprint":
        from metrictransfer.runtime.checkpoint import model_fingerprint

        return model_fingerprint
    raise AttributeError(f"module 'metrictransfer.retrieval' has no attribute {name!r}")
