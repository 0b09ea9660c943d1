"""Searching a gallery of images with a trained embedding model."""

from metrictransfer.search.gallery import Gallery, Neighbour, build_index, list_images, model_fingerprint

__all__ = ["Gallery", "Neighbour", "build_index", "list_images", "model_fingerprint"]
