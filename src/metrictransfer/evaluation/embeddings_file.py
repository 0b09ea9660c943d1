"""Embeddings on disk: one ``.npz`` per set, readable without pickle by numpy or any other tool.

Keys: ``embeddings`` (N × D float), ``labels`` (N int), optionally ``paths`` (N str: where each item came
from), ``is_query`` and ``is_gallery`` (N bool, for query-vs-gallery evaluation), ``metric`` (the distance
the model was trained for), and what the rows are: ``dataset`` and ``split`` (str) and ``items`` (N str,
each row's item name: its image path relative to the dataset root, or a synthetic id for generated data).
Files written before ``dataset``, ``split`` and ``items`` existed still load, with those fields None.
``model`` (str, JSON) describes the model that embedded the rows (``metrictransfer embed`` records it).

:func:`load_embeddings` also reads an embeddings table, a folder of ``.npy`` arrays for sets too large for
memory (:mod:`metrictransfer.evaluation.embeddings_table`), whose embeddings it memory-maps.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metrictransfer.errors import DataError, MissingFileError
from metrictransfer.evaluation.embeddings_table import read_table
from metrictransfer.io import atomic_write

KEYS_HELP = (
    "embeddings (N × D float) and labels (N int); optional paths and items (N str), metric, dataset and "
    "split (str), and for query-vs-gallery is_query and is_gallery (N bool)"
)

_N_KEYS = ("paths", "items", "is_query", "is_gallery")  # one value per row
_TEXT_KEYS = ("metric", "dataset", "split")


@dataclass
class EmbeddingsFile:
    embeddings: np.ndarray
    labels: np.ndarray
    # where each row came from: its file, or dataset:split:index for generated data. A stored key that search shows
    # and older files hold; ``items`` holds the names datasets give their items (RetrievalDataset.item_names)
    paths: np.ndarray | None = None
    is_query: np.ndarray | None = None
    is_gallery: np.ndarray | None = None
    metric: str | None = None
    items: np.ndarray | None = None  # the name of each row's item; None in files of older versions
    dataset: str | None = None  # data.dataset of the embedded items
    split: str | None = None
    model: dict[str, Any] | None = None  # what embedded the rows (a checkpoint's model, a timm model)


def save_embeddings(path: str | os.PathLike[str], data: EmbeddingsFile) -> None:
    """Write atomically, so an interrupted run never leaves a truncated file behind."""
    arrays: dict[str, Any] = {
        "embeddings": np.asarray(data.embeddings, dtype=np.float32),
        "labels": np.asarray(data.labels, dtype=np.int64),
    }
    for key in _N_KEYS:
        if getattr(data, key) is not None:
            arrays[key] = np.asarray(getattr(data, key))
    for key in ("paths", "items"):
        if key in arrays:
            arrays[key] = arrays[key].astype(str)
    for key in _TEXT_KEYS:
        if getattr(data, key) is not None:
            arrays[key] = np.asarray(str(getattr(data, key)))
    if data.model is not None:
        arrays["model"] = np.asarray(json.dumps(data.model))
    atomic_write(path, lambda f: np.savez(f, **arrays), "wb", size=sum(a.nbytes for a in arrays.values()))  # room checked first


def load_embeddings(path: str | os.PathLike[str], query_gallery: bool = False, verify: bool = True) -> EmbeddingsFile:
    """Read and check an embeddings file; every problem is reported with the file and the key.

    ``path`` is an ``.npz``, or an embeddings table's folder: then ``embeddings`` is a read-only
    :class:`numpy.memmap` of its ``embeddings.npy``, checked against its meta.json (count, dim, dtype), and
    with ``verify`` against the SHA-256 meta.json records of each file (which reads every byte once; see
    :func:`~metrictransfer.evaluation.embeddings_table.read_table`). An ``.npz`` is zip's CRC-checked.
    """
    path = Path(path)
    if path.is_dir():
        return _load_table(path, query_gallery, verify)
    if not path.is_file():
        raise MissingFileError(
            f"embeddings file {path} does not exist; expected an .npz holding {KEYS_HELP}, or an embeddings table's folder"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded as npz:
                arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise DataError(f"{path} is not a readable .npz file ({err}); expected one holding {KEYS_HELP}") from err
    if not isinstance(loaded, np.lib.npyio.NpzFile):  # a lone .npy array: no labels beside it
        raise DataError(
            f"{path} holds a single array (shape {loaded.shape}), not an .npz of named arrays; "
            f"expected one holding {KEYS_HELP} (metrictransfer embed writes one)"
        )
    required = ["embeddings", "labels"] + (["is_query", "is_gallery"] if query_gallery else [])
    missing = [key for key in required if key not in arrays]
    if missing:
        raise DataError(
            f"{path} has no {', '.join(repr(k) for k in missing)} array (found: {', '.join(sorted(arrays)) or 'none'}); "
            f"expected {KEYS_HELP}"
        )
    embeddings, labels = arrays["embeddings"], arrays["labels"]
    if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
        raise DataError(f"{path}: 'embeddings' must be a 2-D float array, got {embeddings.dtype} of shape {embeddings.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    for key in _N_KEYS:
        if key in arrays and arrays[key].shape != (len(embeddings),):
            raise DataError(f"{path}: {key!r} has shape {arrays[key].shape} but there are {len(embeddings)} embeddings")
    for key in ("is_query", "is_gallery"):
        if key in arrays and arrays[key].dtype != np.bool_:
            raise DataError(f"{path}: {key!r} must be boolean, got {arrays[key].dtype}")
    if "items" in arrays and arrays["items"].dtype.kind != "U":
        raise DataError(f"{path}: 'items' must be strings (the item names), got {arrays['items'].dtype}")
    for key in _TEXT_KEYS:
        if key in arrays and arrays[key].shape != ():
            raise DataError(f"{path}: {key!r} must be a single string, got an array of shape {arrays[key].shape}")
    text = {key: str(arrays[key]) if key in arrays else None for key in _TEXT_KEYS}
    return EmbeddingsFile(
        embeddings=embeddings,
        labels=labels,
        paths=arrays.get("paths"),
        items=arrays.get("items"),
        is_query=arrays.get("is_query"),
        is_gallery=arrays.get("is_gallery"),
        model=_model_record(path, arrays.get("model")),
        **text,
    )


def _model_record(path: Path, value: np.ndarray | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        record = json.loads(str(value))
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise DataError(f"{path}: 'model' must be a JSON object describing the model, got {str(value)[:60]!r}")
    return record


def _load_table(path: Path, query_gallery: bool, verify: bool) -> EmbeddingsFile:
    table = read_table(path, verify)
    meta = table["meta"]
    if query_gallery and not all(key in table for key in ("is_query", "is_gallery")):
        raise DataError(f"{path} has no is_query.npy and is_gallery.npy, which query-vs-gallery evaluation needs")
    text = {key: meta[key] if isinstance(meta.get(key), str) else None for key in _TEXT_KEYS}
    return EmbeddingsFile(
        embeddings=table["embeddings"],
        labels=table["labels"],
        items=table["items"],
        is_query=table.get("is_query"),
        is_gallery=table.get("is_gallery"),
        model=meta.get("model") if isinstance(meta.get("model"), dict) else None,
        **text,
    )


def compare_items(found: Sequence[str] | np.ndarray, expected: Sequence[str] | np.ndarray) -> str | None:
    """None when `found` names the `expected` items in the same order, else what differs, in words.

    Says whether the count, the order (the same items otherwise) or the items themselves differ, with
    the first differing row and both names.
    """
    found, expected = np.asarray(found, dtype=str), np.asarray(expected, dtype=str)
    if len(found) != len(expected):
        return f"{len(found)} items where {len(expected)} are expected"
    differ = np.flatnonzero(found != expected)
    if not len(differ):
        return None
    row = int(differ[0])
    kind = (
        "the same items in a different order"
        if np.array_equal(np.sort(found), np.sort(expected))
        else (f"{len(differ)} of {len(expected)} rows name other items")
    )
    return f"{kind}: row {row} is {str(found[row])!r} where {str(expected[row])!r} is expected"


def _row_names(a: EmbeddingsFile, b: EmbeddingsFile) -> tuple[np.ndarray, np.ndarray] | None:
    """What names both files' rows, field for field: item names, else paths (older files, other tools)."""
    for key in ("items", "paths"):
        if getattr(a, key) is not None and getattr(b, key) is not None:
            return getattr(a, key), getattr(b, key)
    return None


def check_same_items(files: Sequence[EmbeddingsFile], paths: Sequence[str | os.PathLike[str]]) -> None:
    """Raise :class:`DataError` unless every file holds the same items, in the same order, as the first.

    An ensemble concatenates the files' rows; rows of different items would be evaluated as one item
    without any error. Item names (else paths), dataset and split are compared where both files record
    them (files of older versions do not), and labels, ``is_query`` and ``is_gallery`` always.
    """
    first, first_path = files[0], paths[0]
    for path, other in zip(paths[1:], files[1:]):
        advice = f"an ensemble needs embeddings of the same items in the same order as {first_path}"
        if len(other.labels) != len(first.labels):
            raise DataError(f"{path} holds {len(other.labels)} items but {first_path} holds {len(first.labels)}; {advice}")
        for key in ("dataset", "split"):
            a, b = getattr(first, key), getattr(other, key)
            if a is not None and b is not None and a != b:
                raise DataError(f"{path} holds the {key} {b!r} but {first_path} the {key} {a!r}; {advice}")
        names = _row_names(first, other)
        if names is not None:
            problem = compare_items(names[1], names[0])
            if problem:
                raise DataError(f"{path} differs from {first_path}: {problem}; {advice}")
        for key in ("labels", "is_query", "is_gallery"):
            a, b = getattr(first, key), getattr(other, key)
            if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
                raise DataError(f"{path}: {key!r} differs from {first_path}'s; {advice}")
