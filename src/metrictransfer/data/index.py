"""A split of an image-retrieval dataset as a list of paths and labels, without opening any image.

Readers of dataset layouts (:mod:`.official`, :mod:`.custom`) only parse annotation files and
return :class:`ImageIndex` objects, so indexing 120k images takes well under a second and a wrong
root or a truncated download is reported before any training starts. Whether the listed image
files really exist is a separate, explicit step (:meth:`ImageIndex.check_files`).
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metrictransfer.errors import BadImageError, DataError, MissingFileError

__all__ = ["ImageIndex", "check_splits", "contiguous_labels", "malformed", "require_files"]

#: How many missing paths :meth:`ImageIndex.check_files` quotes.
_QUOTED_MISSING = 5
#: How many shared images or classes :func:`check_splits` quotes.
_QUOTED_SHARED = 5


@dataclass
class ImageIndex:
    """One split: image paths relative to `root`, labels contiguous 0-based inside the split, class names."""

    root: Path
    paths: list[str]  # relative to root, as listed in the annotation files (posix separators)
    labels: np.ndarray  # int64, contiguous 0..C-1 within the split; all -1 for unlabelled data
    classes: list[str]  # name of each label (len C); [] for unlabelled
    is_query: np.ndarray | None = None  # query-vs-gallery evaluation (In-Shop): which items are queries
    is_gallery: np.ndarray | None = None
    listing: Path | None = None  # the annotation file that lists the items, when it has lines ...
    lines: np.ndarray | None = None  # ... and each item's 1-based line in it, to point users at it

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.paths = list(self.paths)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.classes = [str(c) for c in self.classes]
        if len(self.labels) != len(self.paths):
            raise ValueError(f"ImageIndex: {len(self.paths)} paths but {len(self.labels)} labels")
        if self.lines is not None:
            self.lines = np.asarray(self.lines, dtype=np.int64).reshape(-1)
            if len(self.lines) != len(self.paths) or self.listing is None:
                raise ValueError(f"ImageIndex: {len(self.paths)} paths but {len(self.lines)} lines of {self.listing}")

    def where(self, i: int) -> str | None:
        """``"<listing file name> line <n>"`` for item ``i``, or None when the index has no line numbers."""
        if self.lines is None or self.listing is None:
            return None
        return f"{Path(self.listing).name} line {int(self.lines[i])}"

    def __len__(self) -> int:
        return len(self.paths)

    def missing_files(self) -> list[str]:
        """Listed paths that are not files under `root` (in listing order)."""
        return [self.paths[i] for i in self.file_problems()[0]]

    def empty_files(self) -> list[str]:
        """Listed files of 0 bytes (in listing order): no image, whatever their name says."""
        return [self.paths[i] for i in self.file_problems()[1]]

    def file_problems(self) -> tuple[list[int], list[int]]:
        """(missing, empty): the rows whose file is not a regular file under `root`, and those of 0 bytes;
        one ``stat`` per file, no image opened."""
        root = os.fspath(self.root)
        missing, empty = [], []
        for i, p in enumerate(self.paths):
            try:
                info = os.stat(os.path.join(root, p))
            except OSError:
                missing.append(i)
                continue
            if not stat.S_ISREG(info.st_mode):
                missing.append(i)
            elif info.st_size == 0:
                empty.append(i)
        return missing, empty

    def check_files(self, name: str, skip_bad: bool = False) -> None:
        """Raise :class:`MissingFileError` saying how many listed images are missing and quoting the first
        ones, and :class:`BadImageError` for empty (0-byte) files, unless ``skip_bad`` (they are then skipped
        where they are decoded, as every unreadable image is).

        Kept apart from the readers so indexing stays cheap; call it once before training: one ``stat`` per
        file, so a broken file is named before the first step rather than in a loader worker mid-epoch.
        """
        missing, empty = self.file_problems()
        if missing:
            raise MissingFileError(
                f"{name}: {len(missing)} of {len(self)} listed images do not exist under {self.root}; first: {self._quoted(missing)}"
            )
        if empty and not skip_bad:
            raise BadImageError(
                f"{name}: {len(empty)} of {len(self)} images under {self.root} are empty files (0 bytes); first: "
                f"{self._quoted(empty)}; remove them, or set data.skip_bad_images: true to train without them"
            )

    def _quoted(self, rows: list[int]) -> str:
        return ", ".join(self.paths[i] + (f" ({self.where(i)})" if self.lines is not None else "") for i in rows[:_QUOTED_MISSING])


def contiguous_labels(raw: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, list[Any]]:
    """Map raw class ids to 0-based labels ordered by sorted raw id; also return the sorted unique ids.

    Splits of retrieval benchmarks use disjoint classes, so each split gets its own label space.
    """
    values = np.asarray(raw)
    if values.size == 0:
        return np.zeros(0, dtype=np.int64), []
    unique, inverse = np.unique(values, return_inverse=True)
    return inverse.astype(np.int64).reshape(-1), unique.tolist()


def require_files(root: str | Path, names: list[str], dataset: str) -> Path:
    """Check that `root` holds every entry of `names` (a trailing ``/`` means a folder); return `root` as a Path.

    The error lists everything expected, so a user who pointed at the wrong folder sees what the
    right one looks like.
    """
    root = Path(root).expanduser()
    expected = ", ".join(names)
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "does not exist"
        raise MissingFileError(f"{dataset}: root {root} {problem}; expected a folder holding {expected}")
    missing = []
    for name in names:
        path = root / name.rstrip("/")
        present = path.is_dir() if name.endswith("/") else path.is_file()
        if not present:
            missing.append(str(path) + ("/" if name.endswith("/") else ""))
    if missing:
        raise MissingFileError(f"{dataset}: missing {', '.join(missing)}; expected under {root}: {expected}")
    return root


def malformed(path: str | Path, line_number: int, expected: str, line: str) -> DataError:
    """The error for a bad annotation line: file, 1-based line number, the expected form and the line itself."""
    return DataError(f"{path}, line {line_number}: expected {expected}, got {line!r}")


def _first_of(keys: Iterable[str]) -> dict[str, int]:
    """``{key: index of its first occurrence}``."""
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    return first


def _both(a: ImageIndex, i: int, b: ImageIndex, j: int) -> str:
    """Where item ``i`` of `a` and item ``j`` of `b` are listed, e.g. ``"list.csv lines 2 and 9"``; "" without lines."""
    where_a, where_b = a.where(i), b.where(j)
    # where() names a place only for an index with a listing and line numbers
    if where_a and where_b and a.listing == b.listing and a.listing is not None and a.lines is not None and b.lines is not None:
        return f"{Path(a.listing).name} lines {a.lines[i]} and {b.lines[j]}"
    return ", ".join(w for w in (where_a, where_b) if w)


def _quote(name: str, place: str) -> str:
    return f"{name!r} ({place})" if place else repr(name)


def _shared_images(a: ImageIndex, b: ImageIndex) -> list[tuple[int, int]]:
    """Pairs (item of `a`, item of `b`) naming the same file, in `a`'s order (paths compared after
    ``posixpath.normpath``, so ``./x.jpg``, ``d/../x.jpg`` and ``x.jpg`` are one file)."""
    in_b = _first_of(posixpath.normpath(p) for p in b.paths)
    in_a = _first_of(posixpath.normpath(p) for p in a.paths)
    return sorted((in_a[p], in_b[p]) for p in in_a.keys() & in_b.keys())


def _present_classes(index: ImageIndex) -> dict[str, int]:
    """``{class name: its first item}`` for the classes that label at least one item."""
    labels, first = np.unique(index.labels, return_index=True)
    return {index.classes[label]: int(i) for label, i in zip(labels, first) if label >= 0}


def check_splits(splits: Mapping[str, ImageIndex], source: str | Path) -> None:
    """Raise :class:`DataError` when two splits list the same image, or ``train`` shares a class with another split.

    Retrieval is evaluated on images, and classes, never seen in training; a leak inflates every
    reported number without any other sign, so readers refuse it once, when the annotations are read
    (a set intersection, cheap even for SOP). Evaluation splits may share classes with each other: a
    query and its gallery matches have the same class by design (In-Shop), but never the same image.
    `source` names the dataset root or the list file in the message.
    """
    names = list(splits)
    for k, a in enumerate(names):
        for b in names[k + 1 :]:
            pairs = _shared_images(splits[a], splits[b])
            if pairs:
                quoted = [_quote(splits[a].paths[i], _both(splits[a], i, splits[b], j)) for i, j in pairs[:_QUOTED_SHARED]]
                raise DataError(
                    f"{source}: {len(pairs)} image(s) are listed in both {a} and {b}, first: {', '.join(quoted)}; "
                    "an image must be in one split only (else it is evaluated after training on it, or "
                    "retrieves itself): remove it from one split"
                )
    if "train" not in splits:
        return
    train = _present_classes(splits["train"])
    for b in names:
        if b == "train":
            continue
        other = _present_classes(splits[b])
        shared = sorted(train.keys() & other.keys(), key=lambda c: train[c])
        if shared:
            quoted = [_quote(c, _both(splits["train"], train[c], splits[b], other[c])) for c in shared[:_QUOTED_SHARED]]
            raise DataError(
                f"{source}: {len(shared)} class(es) are in both train and {b}, first: {', '.join(quoted)}; "
                "the protocol is class-disjoint (retrieval is evaluated on classes never seen in training): "
                "list each class in one split only"
            )
