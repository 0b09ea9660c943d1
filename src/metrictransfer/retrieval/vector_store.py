"""An index's vectors on disk: one plain ``.npy`` of N × D float32, the embeddings as the model output
them, in the order of the generation's item ids.

Read memory-mapped, so a search touches only the rows it re-ranks or filters among and a catalogue of
10^7 items never has to be in memory; written a chunk at a time into a staged file, so an update or a
build from an embeddings table never holds all rows either. ``index.json`` records the file's SHA-256,
checked on every load: a flipped bit or a file of another build would otherwise rank wrongly without a word.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from metrictransfer.errors import MissingFileError, SearchIndexError
from metrictransfer.io import file_sha256, staged_path
from metrictransfer.retrieval import index_kinds

VECTORS_FILE = "vectors.npy"
_HEADER_BYTES = 128  # numpy's .npy header for a 2-D float32 array


def write_vectors(path: Path, count: int, dim: int, rows: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    """Write rows 0..count-1 (``rows(indices)`` reads them) to ``path``, a chunk at a time and staged;
    returns the record index.json keeps of it."""
    with staged_path(path, size=_HEADER_BYTES + 4 * count * dim) as staged:
        out = np.lib.format.open_memmap(staged, mode="w+", dtype=np.float32, shape=(count, dim))
        for start, stop in index_kinds.chunks(count):
            out[start:stop] = np.asarray(rows(np.arange(start, stop)), dtype=np.float32)
        out.flush()
        del out
        digest = file_sha256(staged)
    return {"file": path.name, "count": count, "dim": dim, "dtype": "float32", "sha256": digest}


def read_vectors(folder: Path, record: dict[str, Any], rebuild: str) -> np.ndarray:
    """The vectors file ``record`` describes, memory-mapped read-only, refused unless its shape and
    SHA-256 are the recorded ones."""
    path = folder / str(record.get("file", VECTORS_FILE))
    if not path.is_file():
        raise MissingFileError(f"the index {folder} has no {path.name}; {rebuild}")
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise SearchIndexError(f"{path} is not a readable .npy array ({err}); {rebuild}") from None
    expected = (record.get("count"), record.get("dim"))
    if vectors.ndim != 2 or vectors.shape != expected or vectors.dtype != np.float32:
        raise SearchIndexError(
            f"{path} holds {vectors.dtype} of shape {vectors.shape}, not the float32 {expected[0]} × {expected[1]} "
            f"index.json describes: the files were edited or come from different builds; {rebuild}"
        )
    if file_sha256(path) != record.get("sha256"):
        raise SearchIndexError(
            f"{path} does not hold what index.json describes (its SHA-256 differs): the files were edited or come "
            f"from different builds; {rebuild}"
        )
    return vectors  # type: ignore[no-any-return]
