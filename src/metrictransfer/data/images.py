"""Image files of an index as a PyTorch dataset, decoded on demand (:mod:`.decode`) to faithful 8-bit RGB,
with unreadable files named or skipped."""

from __future__ import annotations

import multiprocessing
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from metrictransfer.data.decode import ALPHA_BACKGROUND, NOTE_KINDS, SKIP_HINT, UNREADABLE, bad_image, open_rgb8, open_rgb8_raw, to_rgb8
from metrictransfer.data.index import ImageIndex
from metrictransfer.errors import BadImageError

__all__ = ["ALPHA_BACKGROUND", "BadImageError", "ImageFolderDataset", "open_rgb8", "to_rgb8"]


class _Once:
    """Which of a dataset's warnings were told: one flag per image (its skip) and per conversion note, in
    memory shared with the DataLoader worker processes, which inherit it. So each warning is told once per
    run, not again each epoch nor by each worker."""

    def __init__(self, images: int) -> None:
        self.images = images
        self.flags = multiprocessing.Array("b", images + len(NOTE_KINDS))  # zeros: nothing told yet

    def first(self, slot: int) -> bool:
        """Whether ``slot`` is told now for the first time (it is then marked told)."""
        with self.flags.get_lock():
            told = bool(self.flags[slot])
            self.flags[slot] = 1
            return not told

    def __contains__(self, note: object) -> bool:  # conversion notes, as decode.Noted
        return bool(self.flags[self.images + NOTE_KINDS.index(str(note))])

    def add(self, note: str) -> None:
        self.first(self.images + NOTE_KINDS.index(note))


class ImageFolderDataset(torch.utils.data.Dataset[Any]):
    """Items are ``(PIL image in 8-bit RGB mode, label)``; ``None`` for an unreadable file when ``skip_bad``.

    RGB because CUB and SOP hold grayscale and CMYK JPEGs, and backbones expect 3 channels; converted by
    :func:`to_rgb8` so 16-bit and transparent files train as they look. A decoding error is re-raised with
    the file's path, so a crash inside a DataLoader worker still names it. Lossy conversions and skipped
    files are warned once per dataset, whichever DataLoader worker meets them, however many epochs.
    """

    dataset_name: str | None = None  # set by build_dataset; None for images of no dataset
    split: str | None = None

    def __init__(
        self, index: ImageIndex, skip_bad: bool = False, transform: Callable[..., Any] | None = None, bad_hint: str = SKIP_HINT
    ) -> None:
        self.index = index
        self.bad_hint = bad_hint  # what to do about an unreadable file, in the words of the command reading it
        self.skip_bad = skip_bad
        self.transform = transform
        self.labels = index.labels
        self.classes: list[str] | None = index.classes
        self.root: Path | None = index.root
        self.item_names: list[str] = list(index.paths)  # paths relative to root (RetrievalDataset)
        self.is_query = index.is_query  # query-vs-gallery data (In-Shop)
        self.is_gallery = index.is_gallery
        self.warned = _Once(len(index))  # skipped files and conversion notes already warned about

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[Any, int] | None:
        path = self.index.root / self.index.paths[i]
        try:
            image = open_rgb8_raw(path, self.warned)
        except UNREADABLE as err:
            if not self.skip_bad:
                raise bad_image(path, err, self.bad_hint) from err
            if self.warned.first(i):
                reason = str(err).replace(f" {os.fspath(path)!r}", "")  # Pillow's "cannot identify image file '<path>'"
                warnings.warn(f"skipping unreadable image {path}: {reason}; fix or remove it to use it", stacklevel=2)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i])
