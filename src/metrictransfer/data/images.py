"""Image files of an index, decoded on demand to RGB, with unreadable files named or skipped."""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from PIL import Image, UnidentifiedImageError

from metrictransfer.data.index import ImageIndex
from metrictransfer.errors import BadImageError

__all__ = ["BadImageError", "ImageFolderDataset"]


class ImageFolderDataset(torch.utils.data.Dataset):
    """Items are ``(PIL image in RGB mode, label)``; ``None`` for an unreadable file when ``skip_bad``.

    RGB because CUB and SOP hold grayscale and CMYK JPEGs, and backbones expect 3 channels. A decoding
    error is re-raised with the file's path, so a crash inside a DataLoader worker still names it.
    """

    def __init__(self, index: ImageIndex, skip_bad: bool = False, transform: Callable | None = None) -> None:
        self.index = index
        self.skip_bad = skip_bad
        self.transform = transform
        self.labels = index.labels
        self.classes = index.classes
        self.paths = index.paths
        self.is_query = index.is_query  # query-vs-gallery data (In-Shop)
        self.is_gallery = index.is_gallery

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[Any, int] | None:
        path = self.index.root / self.index.paths[i]
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as err:
            if not self.skip_bad:
                raise BadImageError(
                    f"cannot read image {path}: {err}; fix or remove it, or set data.skip_bad_images: true"
                ) from err
            warnings.warn(f"skipping unreadable image {path}: {err}", stacklevel=2)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i])
