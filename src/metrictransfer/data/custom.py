"""Readers for a user's own images: a folder per class, a CSV list, or an unlabelled folder.

Like the official readers they only list files and return ``{split: ImageIndex}``. Without an
explicit split, classes are split class-disjointly and deterministically, because retrieval is
evaluated on classes never seen in training: the class names are sorted (numerically when all are
integers), the first ``round(C * (1 - test_fraction))`` (halves rounded up) go to ``train`` and
the rest to ``test``, as CUB and Cars use their first and second halves. Labels are contiguous
per split in that same class order. Splits that share an image, or a class with ``train``, are
refused (:func:`~metrictransfer.data.index.check_splits`), also when a CSV lists its splits itself.
"""

from __future__ import annotations

import csv
import math
import os
import posixpath
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from metrictransfer.data.index import ImageIndex, check_splits
from metrictransfer.errors import ConfigError, DataError, MissingFileError
from metrictransfer.registry import register_dataset

__all__ = ["CSV_SPLITS", "IMAGE_EXTENSIONS", "read_csv_list", "read_folder", "read_unlabelled"]

#: File extensions counted as images (compared case-insensitively).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
#: Values allowed in a CSV list's ``split`` column.
CSV_SPLITS = ("train", "test", "query", "gallery")
#: How many of a CSV's row problems its error quotes (all are counted).
QUOTED_ROWS = 5


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _image_files(folder: Path, prefix: str = "") -> list[str]:
    """Image files under `folder`, recursively, as sorted posix paths relative to it (with `prefix`).

    Hidden files and folders (``.name``) are skipped: they are thumbnails, checkpoints and the like.
    """
    found: list[str] = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(current, folder)
        rel = "" if rel == "." else Path(rel).as_posix() + "/"
        found.extend(prefix + rel + f for f in files if not f.startswith(".") and _is_image(f))
    return sorted(found)


def _require_folder(root: str | Path, layout: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        problem = "is not a folder" if root.exists() else "does not exist"
        raise MissingFileError(f"{layout}: root {root} {problem}")
    return root


def _split_classes(
    names: list[str],
    test_fraction: float,
    source: str,
    train_classes: Sequence[str] | None = None,
    test_classes: Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Class-disjoint train/test class lists: the given ones, or sorted `names` cut at ``1 - test_fraction``.

    With only one of `train_classes` / `test_classes` given, the other split gets the remaining
    classes; with both, classes in neither are left out.
    """
    if len(names) < 2:
        raise DataError(f"{source}: a class-disjoint split needs at least 2 classes, found {len(names)}")
    if train_classes is None and test_classes is None:
        if not 0.0 < test_fraction < 1.0:
            raise ConfigError(f"{source}: test_fraction must be between 0 and 1, got {test_fraction}")
        n_train = math.floor(len(names) * (1.0 - test_fraction) + 0.5)  # round half up
        train, test = names[:n_train], names[n_train:]
    else:
        if isinstance(train_classes, str) or isinstance(test_classes, str):
            raise TypeError(f"{source}: train_classes and test_classes must be lists of class names, not strings")
        known = set(names)
        for arg, classes in (("train_classes", train_classes), ("test_classes", test_classes)):
            unknown = [c for c in classes or [] if c not in known]
            if unknown:
                raise ConfigError(
                    f"{source}: {arg} names unknown class(es) {', '.join(map(repr, unknown))}; "
                    f"known classes: {', '.join(names[:20])}{', ...' if len(names) > 20 else ''}"
                )
        if train_classes is not None and test_classes is not None:
            overlap = sorted(set(train_classes) & set(test_classes))
            if overlap:
                raise ConfigError(f"{source}: class(es) {', '.join(map(repr, overlap))} are in both train_classes and test_classes")
            train, test = list(dict.fromkeys(train_classes)), list(dict.fromkeys(test_classes))
        elif train_classes is not None:
            train = list(dict.fromkeys(train_classes))
            test = [c for c in names if c not in set(train)]
        else:
            test = list(dict.fromkeys(test_classes or []))
            train = [c for c in names if c not in set(test)]
    for split, classes in (("train", train), ("test", test)):
        if not classes:
            raise ConfigError(
                f"{source}: the {split} split would be empty ({len(names)} classes, test_fraction={test_fraction}, "
                f"train_classes={train_classes}, test_classes={test_classes})"
            )
    return train, test


def _class_order(labels: Sequence[str]) -> list[str]:
    """Sorted unique class names; numerically when every name is an integer (so "2" comes before "10")."""
    unique = set(labels)
    try:
        return sorted(unique, key=lambda name: (int(name), name))
    except ValueError:
        return sorted(unique)


def _string_labels(
    root: Path, paths: list[str], names: list[str], listing: Path | None = None, lines: Sequence[int] | None = None
) -> ImageIndex:
    """An index whose labels are contiguous over the class names, in :func:`_class_order`."""
    classes = _class_order(names)
    label_of = {name: i for i, name in enumerate(classes)}
    labels = np.fromiter((label_of[n] for n in names), np.int64, len(names))
    return ImageIndex(root, paths, labels, classes, listing=listing, lines=None if lines is None else np.asarray(lines))


# ------------------------------------------------------------------------------------------ folder


@register_dataset("folder", reader="class_split")
def read_folder(
    root: str | Path,
    test_fraction: float = 0.5,
    train_classes: Sequence[str] | None = None,
    test_classes: Sequence[str] | None = None,
) -> dict[str, ImageIndex]:
    """Images in one sub-folder per class (searched recursively) -> class-disjoint ``train`` / ``test``.

    A class folder without images is an error (a wrong extension or root is likelier than intent).
    """
    root = _require_folder(root, "folder")
    class_dirs = _class_order([e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")])
    images = {name: _image_files(root / name, name + "/") for name in class_dirs}
    empty = [name for name, files in images.items() if not files]
    if empty:
        raise DataError(
            f"folder: class folder(s) {', '.join(empty)} under {root} hold no images (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    if len(class_dirs) < 2:
        loose = sum(1 for e in os.scandir(root) if e.is_file() and _is_image(e.name))
        hint = f"; {loose} images lie directly under it - use the 'unlabelled' layout for those" if loose else ""
        raise DataError(f"folder: {root} needs one sub-folder per class and at least 2 classes, found {len(class_dirs)}{hint}")
    train, test = _split_classes(class_dirs, test_fraction, f"folder {root}", train_classes, test_classes)
    result = {}
    for split, classes in (("train", train), ("test", test)):
        paths: list[str] = []
        names: list[str] = []
        for name in _class_order(classes):
            paths.extend(images[name])
            names.extend([name] * len(images[name]))
        result[split] = _string_labels(root, paths, names)
    check_splits(result, root)
    return result


# --------------------------------------------------------------------------------------------- CSV


def listed_path_problem(rel: str) -> str | None:
    """What is wrong with a path a CSV lists, or None. It must name a file inside the CSV's folder: a path
    leading out of it (``..``, absolute) names an image under another root, which the checks that images
    and classes stay in one split, and that a source never trained on a target's test images, compare
    by the path under the root and so cannot see."""
    if not rel:
        return "empty path"
    if os.path.isabs(rel):
        return f"path {rel!r} is absolute"
    normal = posixpath.normpath(rel)
    if normal == ".." or normal.startswith("../"):
        return f"path {rel!r} leads outside the CSV's folder"
    if normal == ".":
        return f"path {rel!r} names the CSV's folder, not an image"
    return None


def rows_error(source: str | os.PathLike[str], problems: list[tuple[int, str]], advice: str) -> DataError:
    """One line for every problem of a listing's rows, ``(line number, problem)`` in file order: the first
    :data:`QUOTED_ROWS` quoted, all counted, so that one round of fixes clears them."""
    if len(problems) == 1:
        line, problem = problems[0]
        return DataError(f"{source}, line {line}: {problem}; {advice}")
    shown = "; ".join(f"line {line}: {problem}" for line, problem in problems[:QUOTED_ROWS])
    more = f"; and {len(problems) - QUOTED_ROWS} more" if len(problems) > QUOTED_ROWS else ""
    return DataError(f"{source}: {len(problems)} problems in its rows: {shown}{more}; {advice}")


_CSV_ADVICE = (
    "each row lists one image once, by its path inside the CSV's folder (move the CSV up to the folder holding all "
    f"its images), with a label and, in a split column, one of {', '.join(CSV_SPLITS)}"
)


def _csv_rows(path: Path) -> tuple[list[tuple[str, str, str | None, int]], bool]:
    """``(rows as (path, label, split or None, line number), whether the CSV has a split column)``. Every
    row is checked before any is refused, and all problems are reported together (:func:`rows_error`)."""
    rows: list[tuple[str, str, str | None, int]] = []
    problems: list[tuple[int, str]] = []
    first_line: dict[tuple[str, str | None], int] = {}  # (normalised path, split) → the line that lists it
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        columns = [c.strip().lower() for c in header or []]
        missing = [c for c in ("path", "label") if c not in columns]
        if missing:
            raise DataError(
                f"{path}, line 1: header lacks column(s) {', '.join(missing)}; expected path,label[,split], got {','.join(header or [])!r}"
            )
        i_path, i_label = columns.index("path"), columns.index("label")
        i_split = columns.index("split") if "split" in columns else None
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(columns):
                problems.append((line, f"expected {len(columns)} columns ({','.join(columns)}), got {row}"))
                continue
            rel = row[i_path].strip()
            label = row[i_label].strip()
            found = [listed_path_problem(rel)]
            if not label:
                found.append("empty label")
            split = None
            if i_split is not None:
                split = row[i_split].strip().lower()
                if split not in CSV_SPLITS:
                    found.append(f"unknown split value {row[i_split]!r}")
            if found[0] is None:  # the same file twice in one split (across splits: check_splits says so)
                earlier = first_line.setdefault((posixpath.normpath(rel), split), line)
                if earlier != line:
                    found.append(f"path {rel!r} is listed again (first on line {earlier})")
            problems.extend((line, problem) for problem in found if problem is not None)
            rows.append((rel, label, split, line))
    if problems:
        raise rows_error(path, problems, _CSV_ADVICE)
    return rows, i_split is not None


@register_dataset("csv", reader="class_split")
def read_csv_list(
    path: str | Path,
    test_fraction: float = 0.5,
    train_classes: Sequence[str] | None = None,
    test_classes: Sequence[str] | None = None,
) -> dict[str, ImageIndex]:
    """A CSV with header ``path,label[,split]``; paths are relative to the CSV's folder (the index root).

    With a ``split`` column (train/test/query/gallery) the listed splits are used as they are, and
    query and gallery share one label space; without it classes are split as in :func:`read_folder`
    (``train_classes`` / ``test_classes`` apply only then). Labels that are all integers are ordered
    numerically, otherwise as strings. Each item keeps its CSV line number for error messages.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(f"csv: list {path} does not exist; expected a CSV file with header path,label[,split]")
    root = path.parent
    try:
        rows, has_split = _csv_rows(path)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason}); expected a CSV file with header path,label[,split]") from None
    except csv.Error as err:
        raise DataError(f"{path}: not a readable CSV file ({err}); expected header path,label[,split]") from None
    if not rows:
        raise DataError(f"{path}: no images listed")

    if not has_split:
        order = _class_order([row[1] for row in rows])
        train, test = _split_classes(order, test_fraction, f"csv {path}", train_classes, test_classes)
        split_of = {**{c: "test" for c in test}, **{c: "train" for c in train}}
        assignment = [split_of.get(row[1]) for row in rows]  # None: a class in neither given list
    elif train_classes is not None or test_classes is not None:
        raise ConfigError(
            f"{path} has a split column, so data.train_classes / data.test_classes do not apply: "
            "leave them out, or drop the column to split by class"
        )
    else:
        assignment = [row[2] for row in rows]

    def index(chosen: list[tuple[str, str, str | None, int]]) -> ImageIndex:
        return _string_labels(root, [r[0] for r in chosen], [r[1] for r in chosen], path, [r[3] for r in chosen])

    result: dict[str, ImageIndex] = {}
    for split in ("train", "test"):
        chosen = [row for row, s in zip(rows, assignment) if s == split]
        if chosen:
            result[split] = index(chosen)
    retrieval = [(row, s) for row, s in zip(rows, assignment) if s in ("query", "gallery")]
    if retrieval:  # one label space for both, so that a query's matches carry its label
        shared = index([r for r, _ in retrieval])
        where = np.asarray([s for _, s in retrieval])
        for split in ("query", "gallery"):
            chosen_idx = np.flatnonzero(where == split)
            if len(chosen_idx):
                result[split] = ImageIndex(
                    root,
                    [shared.paths[i] for i in chosen_idx],
                    shared.labels[chosen_idx],
                    shared.classes,
                    listing=path,
                    lines=None if shared.lines is None else shared.lines[chosen_idx],
                )
    check_splits(result, path)
    return result


# -------------------------------------------------------------------------------------- unlabelled


@register_dataset("unlabelled", reader="root")
def read_unlabelled(root: str | Path) -> dict[str, ImageIndex]:
    """Every image under `root` (recursive, sorted) as one ``train`` split with labels -1 and no classes."""
    root = _require_folder(root, "unlabelled")
    paths = _image_files(root)
    if not paths:
        raise DataError(f"unlabelled: no images under {root} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return {"train": ImageIndex(root, paths, np.full(len(paths), -1, dtype=np.int64), [])}
