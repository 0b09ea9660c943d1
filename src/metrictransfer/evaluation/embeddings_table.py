"""Embeddings tables: a folder of arrays for sets too large for one ``.npz`` in memory.

Layout (``metrictransfer embed --out DIR`` writes it, :func:`read_table` reads it)::

    DIR/embeddings.npy   N × D float32 (or float16), read memory-mapped: rows load when they are used
    DIR/labels.npy       N int64
    DIR/items.npy        N str, each row's item name (the image path relative to the dataset root, or a
                         synthetic id for generated data), as in an .npz's ``items``
    DIR/is_query.npy, DIR/is_gallery.npy   N bool, only where the split has them (In-Shop's test split)
    DIR/meta.json        what the rows are: format and version, count, dim, dtype, dataset, split, metric,
                         the model that embedded them, and the SHA-256 of every file above

Every array is a plain ``.npy`` (numpy, or any tool that reads the format, without pickle). A table is built
in a hidden staging folder beside ``DIR`` (``.DIR.XXXXXXXX.staging``) and renamed to ``DIR`` only when every
file is written and flushed, so a crash never leaves a half table under its final name. Several processes
can fill one table: each writes its own rows straight into the memory-mapped ``embeddings.npy``
(:func:`open_rows`), so the whole table never has to fit in one process's memory.

:func:`read_table` checks every file against its recorded SHA-256 by default: a flipped bit in the
embeddings or a ``labels.npy`` replaced by other labels would otherwise give wrong recalls without a word.
Tables of version 1 written before the labels, items and masks were recorded have only the checksum of
``embeddings.npy``; their other files are checked against the count and types only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from metrictransfer.errors import DataError, MissingFileError, OutputLocationError, is_output_problem, output_error
from metrictransfer.io import atomic_write_text, current_umask, file_sha256, make_parent

if TYPE_CHECKING:  # torch is imported where rows become tensors: reading a table (search) needs none
    import torch

TABLE_FORMAT = "metrictransfer embeddings table"
TABLE_VERSION = 1
EMBEDDINGS, LABELS, ITEMS, META = "embeddings.npy", "labels.npy", "items.npy", "meta.json"
MASKS = ("is_query", "is_gallery")  # optional, one bool per row
DTYPES = ("float32", "float16")
_COPY_ROWS = 1 << 16  # rows copied at a time when rows of unreadable images are dropped
# Folders, unlike the .partial files of metrictransfer.io, whose clean-up of a run folder deletes files only.
STAGING_SUFFIX, REPLACED_SUFFIX = ".staging", ".replaced"


def is_table(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding an embeddings table (its meta.json names the format)."""
    meta = Path(path) / META
    try:
        return meta.is_file() and json.loads(meta.read_text()).get("format") == TABLE_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that exists unless ``overwrite`` and it is an embeddings table (nothing else is
    ever deleted)."""
    if not out.exists() and not out.is_symlink():
        return
    if not is_table(out):
        what = "a folder that is not an embeddings table" if out.is_dir() else "a file"
        raise OutputLocationError(f"{out} exists and is {what}; choose another --out (an embeddings table is written as a new folder)")
    if not overwrite:
        raise OutputLocationError(f"{out} already holds an embeddings table; choose another --out, or add --overwrite to replace it")


def new_staging(out: Path) -> Path:
    """A new hidden folder beside ``out`` to build the table in, readable as a plain ``mkdir`` would make it."""
    make_parent(out)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=STAGING_SUFFIX, dir=out.parent))
    except OSError as err:
        raise (output_error(err, out) if is_output_problem(err) else err) from None
    staging.chmod(0o777 & ~current_umask())
    return staging


def create_rows(staging: Path, count: int, dim: int, dtype: str) -> None:
    """The table's ``embeddings.npy``, ``count`` × ``dim`` zeros of ``dtype``, for :func:`open_rows` to fill."""
    rows = np.lib.format.open_memmap(staging / EMBEDDINGS, mode="w+", dtype=np.dtype(dtype), shape=(count, dim))
    rows.flush()
    del rows


def open_rows(staging: Path) -> np.memmap:
    """``embeddings.npy`` of a table being built, memory-mapped for writing rows in place."""
    rows: np.memmap = np.lib.format.open_memmap(staging / EMBEDDINGS, mode="r+")
    return rows


def finish_table(
    staging: Path,
    out: Path,
    kept: np.ndarray,
    labels: np.ndarray,
    items: np.ndarray,
    meta: dict[str, Any],
    masks: dict[str, np.ndarray] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Complete the table built in ``staging`` and rename it to ``out``; returns its meta.json.

    ``kept``: the rows of ``embeddings.npy`` that hold embeddings, in order (rows of images skipped as
    unreadable are dropped); ``labels``, ``items`` and ``masks`` are already those rows'. ``meta``: what the
    rows are (dataset, split, metric, model), completed with the format, count, dim, dtype and checksum.
    """
    path = staging / EMBEDDINGS
    embeddings = np.load(path, mmap_mode="r")
    count, dim, dtype = len(kept), int(embeddings.shape[1]), str(embeddings.dtype)
    if count != len(embeddings):
        _keep_rows(path, kept)
    del embeddings
    _save(staging / LABELS, np.asarray(labels, dtype=np.int64))
    _save(staging / ITEMS, np.asarray(items, dtype=str))
    for key, mask in (masks or {}).items():
        _save(staging / f"{key}.npy", np.asarray(mask, dtype=bool))
    record = {
        "format": TABLE_FORMAT,
        "version": TABLE_VERSION,
        "count": count,
        "dim": dim,
        "dtype": dtype,
        **meta,
        "sha256": {name: file_sha256(staging / name) for name in _array_files(staging)},
    }
    atomic_write_text(json.dumps(record, indent=2) + "\n", staging / META)
    for file in staging.iterdir():
        _fsync(file)
    _fsync(staging)
    _replace(staging, out, overwrite)
    return record


def _array_files(folder: Path) -> list[str]:
    """The names of the table's array files present in ``folder``: the three always there, then the masks."""
    return [EMBEDDINGS, LABELS, ITEMS] + [f"{key}.npy" for key in MASKS if (folder / f"{key}.npy").exists()]


def _keep_rows(path: Path, kept: np.ndarray) -> None:
    source = np.load(path, mmap_mode="r")
    compact = path.with_name(f".kept.{path.name}")
    target = np.lib.format.open_memmap(compact, mode="w+", dtype=source.dtype, shape=(len(kept), source.shape[1]))
    for start in range(0, len(kept), _COPY_ROWS):
        target[start : start + _COPY_ROWS] = source[kept[start : start + _COPY_ROWS]]
    target.flush()
    del source, target
    os.replace(compact, path)


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished table to ``out``; an earlier table there (``overwrite``) is moved aside first and
    deleted after, so ``out`` holds the old table or the new one, never parts of both."""
    check_output(out, overwrite)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=REPLACED_SUFFIX, dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(staging, out)
    _fsync(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_staging(staging: Path) -> None:
    shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ reading


def read_table(path: Path, verify: bool = True, mapped: bool = False) -> dict[str, Any]:
    """A table's meta.json and arrays (``embeddings`` memory-mapped read-only, the rest loaded), checked
    against each other (count, dim and dtype) and, with ``verify``, against the SHA-256 meta.json records of
    each file: damage of the same shape (a flipped bit, labels replaced) passes every other check. Verifying
    reads every byte once; ``verify=False`` is for a caller that only needs the shape and reads the table
    again, verified, before using its rows. ``mapped``: labels, items and masks memory-mapped too, for a
    reader that goes through them a chunk at a time. Every problem is a one-line error naming the file."""
    meta_path = path / META
    if not meta_path.is_file():
        raise MissingFileError(
            f"{path} is a folder but not an embeddings table: it has no {META} (metrictransfer embed --out DIR writes one)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, OSError) as err:
        raise DataError(f"{meta_path} is not readable JSON ({err}); write the table again with metrictransfer embed") from None
    if not isinstance(meta, dict) or meta.get("format") != TABLE_FORMAT:
        raise DataError(f'{meta_path} does not describe an embeddings table (no "format": {TABLE_FORMAT!r})')
    if meta.get("version") != TABLE_VERSION:
        raise DataError(f"{meta_path}: table version {meta.get('version')!r}, but this metrictransfer reads version {TABLE_VERSION}")
    for key, kind in (("count", int), ("dim", int), ("dtype", str)):
        if not isinstance(meta.get(key), kind):
            raise DataError(f"{meta_path}: {key!r} must be {'an integer' if kind is int else 'a string'}, got {meta.get(key)!r}")
    count, dim = meta["count"], meta["dim"]
    embeddings = _load(path / EMBEDDINGS, mmap=True)
    if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
        raise DataError(f"{path / EMBEDDINGS} must be a 2-D float array, got {embeddings.dtype} of shape {embeddings.shape}")
    if embeddings.shape != (count, dim):
        raise DataError(
            f"{path / EMBEDDINGS} has shape {embeddings.shape} but {meta_path} says {count} rows of {dim} dimensions; "
            "the table is damaged: write it again"
        )
    if str(embeddings.dtype) != meta["dtype"]:
        raise DataError(f"{path / EMBEDDINGS} holds {embeddings.dtype} but {meta_path} says {meta['dtype']}; the table is damaged")
    arrays: dict[str, Any] = {"meta": meta, "embeddings": embeddings}
    arrays["labels"] = labels = _load(path / LABELS, mmap=mapped)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path / LABELS} must be {count} integers (one per row), got {labels.dtype} of shape {labels.shape}")
    arrays["items"] = items = _load(path / ITEMS, mmap=mapped)
    if items.shape != (count,) or items.dtype.kind != "U":
        raise DataError(f"{path / ITEMS} must be {count} strings (one item name per row), got {items.dtype} of shape {items.shape}")
    for key in MASKS:
        if (path / f"{key}.npy").exists():
            arrays[key] = mask = _load(path / f"{key}.npy", mmap=mapped)
            if mask.shape != (count,) or mask.dtype != np.bool_:
                raise DataError(f"{path / f'{key}.npy'} must be {count} booleans, got {mask.dtype} of shape {mask.shape}")
    if verify:
        _verify(path, meta)
    return arrays


def _verify(path: Path, meta: dict[str, Any]) -> None:
    """Compare each array file's SHA-256 with the one meta.json records.

    Tables that record every file's checksum (this version on) must record each array file they hold:
    a mask added afterwards would change the evaluation as surely as changed labels. Tables written
    earlier record ``embeddings.npy`` only; their other files are left unchecked, with a warning.
    """
    meta_path = path / META
    again = "write the table again with metrictransfer embed"
    recorded = meta.get("sha256")
    if not isinstance(recorded, dict) or not isinstance(recorded.get(EMBEDDINGS), str):
        raise DataError(f"{meta_path} records no SHA-256 of {EMBEDDINGS}, so the table cannot be checked; {again}")
    present = _array_files(path)
    if LABELS in recorded:
        unrecorded = [name for name in present if name not in recorded]
        if unrecorded:
            raise DataError(
                f"{path / unrecorded[0]} was not written with the table ({meta_path} records no checksum of it); remove it, or {again}"
            )
        missing = [name for name in recorded if name not in present]
        if missing:
            raise MissingFileError(f"{path / missing[0]} is missing: the embeddings table {path} is incomplete; {again}")
        checked = present
    else:
        checked = [EMBEDDINGS]
        warnings.warn(
            f"{meta_path} records the checksum of {EMBEDDINGS} only (written by an earlier metrictransfer): "
            f"{', '.join(present[1:])} are not checked for damage; {again} to have them checked",
            stacklevel=3,
        )
    for name in checked:
        found, expected = file_sha256(path / name), recorded[name]
        if found != expected:
            raise DataError(
                f"{path / name} fails its checksum (SHA-256 {found[:12]}…, {meta_path} records {str(expected)[:12]}…): "
                f"its bytes are not the ones written; {again}"
            )


def _load(path: Path, mmap: bool = False) -> np.ndarray:
    if not path.is_file():
        raise MissingFileError(f"{path} is missing: the embeddings table {path.parent} is incomplete; write it again")
    try:
        array: np.ndarray = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"{path} is not a readable .npy array ({err}); the table is damaged: write it again") from None
    return array


class TableRows:
    """A table's embeddings read by row index, for training: ``rows[indices]`` reads just those rows of the
    memory-mapped file and returns them as float32 on ``indices``' device."""

    def __init__(self, embeddings: npt.NDArray[Any]) -> None:
        self.embeddings = embeddings

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.embeddings.shape)

    def __len__(self) -> int:
        return len(self.embeddings)

    def __getitem__(self, indices: torch.Tensor | None) -> torch.Tensor:
        if indices is None:
            raise TypeError("the rows of an embeddings table are read by index: pass the items' positions")
        import torch

        rows = np.ascontiguousarray(self.embeddings[indices.cpu().numpy()], dtype=np.float32)
        return torch.from_numpy(rows).to(indices.device)


def rows_by_index(embeddings: npt.NDArray[Any]) -> torch.Tensor | TableRows:
    """Source embeddings as a training step indexes them: a memory-mapped table stays on disk
    (:class:`TableRows`), anything else becomes one float32 tensor."""
    if isinstance(embeddings, np.memmap):
        return TableRows(embeddings)
    import torch

    return torch.from_numpy(np.asarray(embeddings)).float()
