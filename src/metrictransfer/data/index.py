"""A split of an image-retrieval dataset as a list of paths and labels, without opening any image.

Readers of dataset layouts (:mod:`.official`, :mod:`.custom`) only parse annotation files and
return :class:`ImageIndex` objects, so indexing 120k images takes well under a second and a wrong
root or a truncated download is reported before any training starts. Whether the listed image
files really exist is a separate, explicit step (:meth:`ImageIndex.check_files`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ImageIndex", "contiguous_labels", "malformed", "require_files"]

#: How many missing paths :meth:`ImageIndex.check_files` quotes.
_QUOTED_MISSING = 5


@dataclass
class ImageIndex:
    """One split: image paths relative to `root`, labels contiguous 0-based inside the split, class names."""

    root: Path
    paths: list[str]  # relative to root, as listed in the annotation files (posix separators)
    labels: np.ndarray  # int64, contiguous 0..C-1 within the split; all -1 for unlabelled data
    classes: list[str]  # name of each label (len C); [] for unlabelled
    is_query: np.ndarray | None = None  # query-vs-gallery evaluation (In-Shop): which items are queries
    is_gallery: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.paths = list(self.paths)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.classes = [str(c) for c in self.classes]
        if len(self.labels) != len(self.paths):
            raise ValueError(f"ImageIndex: {len(self.paths)} paths but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.paths)

    def missing_files(self) -> list[str]:
        """Listed paths that are not files under `root` (in listing order)."""
        root = os.fspath(self.root)
        isfile, join = os.path.isfile, os.path.join
        return [p for p in self.paths if not isfile(join(root, p))]

    def check_files(self, name: str) -> None:
        """Raise FileNotFoundError saying how many listed images are missing and quoting the first ones.

        Kept apart from the readers so indexing stays cheap; call it once before training.
        """
        missing = self.missing_files()
        if missing:
            raise FileNotFoundError(
                f"{name}: {len(missing)} of {len(self)} listed images do not exist under {self.root}; "
                f"first: {', '.join(missing[:_QUOTED_MISSING])}"
            )


def contiguous_labels(raw: Sequence) -> tuple[np.ndarray, list]:
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
        raise FileNotFoundError(f"{dataset}: root {root} {problem}; expected a folder holding {expected}")
    missing = []
    for name in names:
        path = root / name.rstrip("/")
        present = path.is_dir() if name.endswith("/") else path.is_file()
        if not present:
            missing.append(str(path) + ("/" if name.endswith("/") else ""))
    if missing:
        raise FileNotFoundError(f"{dataset}: missing {', '.join(missing)}; expected under {root}: {expected}")
    return root


def malformed(path: str | Path, line_number: int, expected: str, line: str) -> ValueError:
    """The error for a bad annotation line: file, 1-based line number, the expected form and the line itself."""
    return ValueError(f"{path}, line {line_number}: expected {expected}, got {line!r}")
