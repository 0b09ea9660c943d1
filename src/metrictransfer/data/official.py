"""Readers for the four standard metric-learning benchmarks, in the formats their authors distribute.

Each reader takes the folder the official archive unpacks to, parses only the annotation files and
returns ``{split: ImageIndex}``; no image is opened and image files are not checked (use
:meth:`ImageIndex.check_files`). Splits follow the usual deep-metric-learning protocol, which is
class-disjoint and differs from the datasets' own classification splits:

* CUB-200-2011: classes 1-100 ``train``, 101-200 ``test`` (``train_test_split.txt`` is ignored).
* Cars-196: all images; classes 1-98 ``train``, 99-196 ``test`` (the ``test`` flag is ignored).
* Stanford Online Products: ``Ebay_train.txt`` / ``Ebay_test.txt``.
* In-Shop Clothes: ``train``, ``query`` and ``gallery`` from ``list_eval_partition.txt``;
  query and gallery share one label space so that an item has the same label in both.

Labels are contiguous and 0-based inside each split, ordered by the dataset's raw class id. Every
reader refuses, with a :class:`~metrictransfer.errors.DataError` naming the file, annotations that
are not in the official format and splits that share an image or (with ``train``) a class
(:func:`~metrictransfer.data.index.check_splits`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metrictransfer.data.index import ImageIndex, check_splits, contiguous_labels, malformed, require_files
from metrictransfer.errors import DataError, MissingPackageError
from metrictransfer.registry import register_dataset

__all__ = ["EXPECTED", "read_cars", "read_cub", "read_inshop", "read_sop"]

#: What each dataset's root must hold (a trailing ``/`` is a folder); quoted in error messages.
EXPECTED: dict[str, list[str]] = {
    "cub": ["images.txt", "image_class_labels.txt", "classes.txt", "images/"],
    "cars": ["cars_annos.mat", "car_ims/"],
    "sop": ["Ebay_train.txt", "Ebay_test.txt"],
    "inshop": ["list_eval_partition.txt", "img/"],
}

_CUB_CLASSES = 200
_CARS_CLASSES = 196
_SOP_HEADER = ["image_id", "class_id", "super_class_id", "path"]
_INSHOP_HEADER = ["image_name", "item_id", "evaluation_status"]
_INSHOP_SPLITS = ("train", "query", "gallery")


def _lines(path: Path) -> list[str]:
    """All lines of a text annotation file (line ``i`` of the file is element ``i - 1``)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as err:
        line = err.object[: err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not UTF-8 text ({err.reason}); expected the dataset's text annotation file") from None


def _index(
    root: Path,
    paths: list[str],
    raw: Sequence[Any] | np.ndarray,
    name_of: Callable[[Any], str],
    listing: Path | None = None,
    lines: Sequence[int] | None = None,
) -> ImageIndex:
    labels, unique = contiguous_labels(raw)
    return ImageIndex(
        root, paths, labels, [name_of(u) for u in unique], listing=listing, lines=None if lines is None else np.asarray(lines)
    )


def _split_by_class(
    root: Path,
    paths: list[str],
    class_ids: list[int],
    last_train_class: int,
    name_of: Callable[[Any], str],
    listing: Path | None = None,
    lines: list[int] | None = None,
) -> dict[str, ImageIndex]:
    """Class-disjoint protocol: raw classes ``<= last_train_class`` train, the others test."""
    ids = np.asarray(class_ids, dtype=np.int64)
    result = {}
    for split, mask in (("train", ids <= last_train_class), ("test", ids > last_train_class)):
        chosen = np.flatnonzero(mask)
        chosen_lines = None if lines is None else [lines[i] for i in chosen]
        result[split] = _index(root, [paths[i] for i in chosen], ids[chosen], name_of, listing, chosen_lines)
    check_splits(result, root)  # one image listed under two ids in both halves
    return result


# --------------------------------------------------------------------------------------------- CUB


def _id_table(path: Path, expected: str, int_values: bool, lines: dict[int, int] | None = None) -> dict[int, Any]:
    """Parse ``<int id> <value>`` lines (CUB's annotation files) into ``{id: value}``; fill `lines` with ``{id: line}``."""
    table: dict[int, Any] = {}
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split(None, 1)
        try:
            if len(parts) != 2:
                raise ValueError
            key = int(parts[0])
            value: Any = int(parts[1]) if int_values else parts[1].strip()
        except ValueError:
            raise malformed(path, number, expected, line) from None
        if key in table:
            raise DataError(f"{path}, line {number}: id {key} is listed twice")
        table[key] = value
        if lines is not None:
            lines[key] = number
    return table


@register_dataset("cub", reader="root")
def read_cub(root: str | Path) -> dict[str, ImageIndex]:
    """CUB-200-2011 from ``images.txt``, ``image_class_labels.txt`` and ``classes.txt``.

    Paths are ``images/<path in images.txt>``; classes 1-100 are ``train`` and 101-200 ``test``.
    """
    root = require_files(root, EXPECTED["cub"], "cub")
    image_lines: dict[int, int] = {}
    images = _id_table(root / "images.txt", "'<image_id> <relative image path>'", int_values=False, lines=image_lines)
    labels_file = root / "image_class_labels.txt"
    image_classes = _id_table(labels_file, "'<image_id> <class_id>'", int_values=True)
    names_file = root / "classes.txt"
    names = _id_table(names_file, "'<class_id> <class name>'", int_values=False)
    for class_id in names:
        if not 1 <= class_id <= _CUB_CLASSES:
            raise DataError(f"{names_file}: class id {class_id} is outside 1..{_CUB_CLASSES}")

    paths, class_ids = [], []
    for image_id, rel in images.items():
        if image_id not in image_classes:
            raise DataError(f"{labels_file}: image {image_id} of images.txt has no class")
        class_id = image_classes[image_id]
        if class_id not in names:
            raise DataError(f"{labels_file}: image {image_id} has class {class_id}, which is not in classes.txt")
        paths.append("images/" + rel)
        class_ids.append(class_id)
    lines = [image_lines[image_id] for image_id in images]
    return _split_by_class(root, paths, class_ids, _CUB_CLASSES // 2, lambda c: names[c], root / "images.txt", lines)


# -------------------------------------------------------------------------------------------- Cars


def _scalar(value: Any) -> Any:
    """Unwrap the 1-element (possibly nested object) arrays that MATLAB structs and cells load as."""
    while isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"expected a single value, got an array of shape {value.shape}")
        value = value.reshape(-1)[0]
    return value


@register_dataset("cars", reader="root")
def read_cars(root: str | Path) -> dict[str, ImageIndex]:
    """Cars-196 from ``cars_annos.mat`` (needs scipy); classes 1-98 ``train``, 99-196 ``test``.

    All 16,185 images are used and the file's ``test`` flag (the classification split) is ignored,
    as in the metric-learning protocol.
    """
    root = require_files(root, EXPECTED["cars"], "cars")
    try:
        from scipy.io import loadmat
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise MissingPackageError("reading Cars-196 (cars_annos.mat) needs scipy: pip install scipy") from err
    path = root / "cars_annos.mat"
    try:
        mat = loadmat(path, squeeze_me=True)
    except Exception as err:  # scipy's parser of a user's file: any failure means the bytes are not a MAT file
        raise DataError(
            f"{path} is not a readable MATLAB file ({type(err).__name__}: {err}); "
            "expected the cars_annos.mat of the Cars-196 download (MATLAB 5 format)"
        ) from None
    for key in ("annotations", "class_names"):
        if key not in mat:
            raise DataError(f"{path}: no variable {key!r}; expected 'annotations' (struct array) and 'class_names'")
    annotations = np.atleast_1d(mat["annotations"]).reshape(-1)
    fields = annotations.dtype.names or ()
    missing = [f for f in ("relative_im_path", "class") if f not in fields]
    if missing:
        raise DataError(f"{path}: 'annotations' lacks field(s) {', '.join(missing)}; has {', '.join(fields) or 'no fields'}")
    try:
        names = [str(_scalar(n)) for n in np.atleast_1d(mat["class_names"]).reshape(-1)]
    except ValueError as err:
        raise DataError(f"{path}: 'class_names' must hold one name per class: {err}") from None

    paths, class_ids = [], []
    for i, record in enumerate(annotations, start=1):
        try:
            rel = str(_scalar(record["relative_im_path"]))
            class_id = int(_scalar(record["class"]))
        except (ValueError, TypeError) as err:
            raise DataError(f"{path}: annotation {i}: {err}; expected a relative_im_path string and an integer class") from None
        if not 1 <= class_id <= min(_CARS_CLASSES, len(names)):
            raise DataError(
                f"{path}: annotation {i} ({rel}) has class {class_id}; expected 1..{_CARS_CLASSES} "
                f"with a name in 'class_names' ({len(names)} names)"
            )
        paths.append(rel)
        class_ids.append(class_id)
    return _split_by_class(root, paths, class_ids, _CARS_CLASSES // 2, lambda c: names[c - 1])


# --------------------------------------------------------------------------------------------- SOP


def _read_sop_list(root: Path, name: str) -> ImageIndex:
    path = root / name
    lines = _lines(path)
    if not lines or lines[0].split() != _SOP_HEADER:
        raise malformed(path, 1, f"the header {' '.join(_SOP_HEADER)!r}", lines[0] if lines else "")
    expected = "'<image_id> <class_id> <super_class_id> <path>'"
    paths, class_ids, numbers = [], [], []
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split(None, 3)
        if not parts:
            continue
        try:
            if len(parts) != 4:
                raise ValueError
            int(parts[0]), int(parts[2])
            class_ids.append(int(parts[1]))
        except ValueError:
            raise malformed(path, number, expected, line) from None
        paths.append(parts[3].rstrip())
        numbers.append(number)
    return _index(root, paths, class_ids, str, path, numbers)


@register_dataset("sop", reader="root")
def read_sop(root: str | Path) -> dict[str, ImageIndex]:
    """Stanford Online Products from ``Ebay_train.txt`` and ``Ebay_test.txt``; class names are the class ids."""
    root = require_files(root, EXPECTED["sop"], "sop")
    splits = {"train": _read_sop_list(root, "Ebay_train.txt"), "test": _read_sop_list(root, "Ebay_test.txt")}
    check_splits(splits, root)
    return splits


# ------------------------------------------------------------------------------------------ In-Shop


@register_dataset("inshop", reader="root")
def read_inshop(root: str | Path) -> dict[str, ImageIndex]:
    """In-Shop Clothes Retrieval from ``list_eval_partition.txt``: ``train``, ``query`` and ``gallery``.

    Query and gallery labels are contiguous over the union of their item ids (and both carry that
    union as ``classes``), so a query matches gallery images with the same label.
    """
    root = require_files(root, EXPECTED["inshop"], "inshop")
    path = root / "list_eval_partition.txt"
    lines = _lines(path)
    first = lines[0] if lines else ""
    try:
        declared = int(first.strip())
    except ValueError:
        raise malformed(path, 1, "the number of images", first) from None
    header = lines[1] if len(lines) > 1 else ""
    if header.split() != _INSHOP_HEADER:
        raise malformed(path, 2, f"the header {' '.join(_INSHOP_HEADER)!r}", header)

    rows: dict[str, tuple[list[str], list[str], list[int]]] = {split: ([], [], []) for split in _INSHOP_SPLITS}
    count = 0
    for number, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[2] not in rows:
            raise malformed(path, number, f"'<image_name> <item_id> <{'|'.join(_INSHOP_SPLITS)}>'", line)
        split_paths, split_items, split_lines = rows[parts[2]]
        split_paths.append(parts[0])
        split_items.append(parts[1])
        split_lines.append(number)
        count += 1
    if count != declared:
        raise DataError(f"{path}: line 1 says {declared} images but {count} are listed")

    train_paths, train_items, train_lines = rows["train"]
    (query_paths, query_items, query_lines), (gallery_paths, gallery_items, gallery_lines) = rows["query"], rows["gallery"]
    shared, items = contiguous_labels(query_items + gallery_items)
    n_query = len(query_items)
    splits = {
        "train": _index(root, train_paths, train_items, str, path, train_lines),
        "query": ImageIndex(root, query_paths, shared[:n_query], items, listing=path, lines=np.asarray(query_lines)),
        "gallery": ImageIndex(root, gallery_paths, shared[n_query:], items, listing=path, lines=np.asarray(gallery_lines)),
    }
    # The protocol: training items are not evaluated; queries and gallery share items but not images.
    check_splits(splits, path)
    return splits
