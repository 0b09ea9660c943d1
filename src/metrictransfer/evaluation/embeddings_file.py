"""Embeddings on disk: one ``.npz`` per set, readable without pickle by numpy or any other tool.

Keys: ``embeddings`` (N × D float), ``labels`` (N int), optionally ``paths`` (N str: where each item came
from), ``is_query`` and ``is_gallery`` (N bool, for query-vs-gallery evaluation) and ``metric`` (the distance
the model was trained for).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metrictransfer.io import atomic_write

KEYS_HELP = (
    "embeddings (N × D float) and labels (N int); optional paths (N str), metric (str), "
    "and for query-vs-gallery is_query and is_gallery (N bool)"
)


@dataclass
class EmbeddingsFile:
    embeddings: np.ndarray
    labels: np.ndarray
    paths: np.ndarray | None = None
    is_query: np.ndarray | None = None
    is_gallery: np.ndarray | None = None
    metric: str | None = None


def save_embeddings(path: str | os.PathLike, data: EmbeddingsFile) -> None:
    """Write atomically, so an interrupted run never leaves a truncated file behind."""
    arrays = {"embeddings": np.asarray(data.embeddings, dtype=np.float32), "labels": np.asarray(data.labels, dtype=np.int64)}
    for key in ("paths", "is_query", "is_gallery"):
        if getattr(data, key) is not None:
            arrays[key] = np.asarray(getattr(data, key))
    if data.metric is not None:
        arrays["metric"] = np.asarray(data.metric)
    if "paths" in arrays:
        arrays["paths"] = arrays["paths"].astype(str)
    atomic_write(path, lambda f: np.savez(f, **arrays), "wb")


def load_embeddings(path: str | os.PathLike, query_gallery: bool = False) -> EmbeddingsFile:
    """Read and check an embeddings file; every problem is reported with the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file {path} does not exist; expected an .npz holding {KEYS_HELP}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise ValueError(f"{path} is not a readable .npz file ({err}); expected one holding {KEYS_HELP}") from err
    required = ["embeddings", "labels"] + (["is_query", "is_gallery"] if query_gallery else [])
    missing = [key for key in required if key not in arrays]
    if missing:
        raise ValueError(
            f"{path} has no {', '.join(repr(k) for k in missing)} array (found: {', '.join(sorted(arrays)) or 'none'}); "
            f"expected {KEYS_HELP}"
        )
    embeddings, labels = arrays["embeddings"], arrays["labels"]
    if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating):
        raise ValueError(f"{path}: 'embeddings' must be a 2-D float array, got {embeddings.dtype} of shape {embeddings.shape}")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: 'labels' must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    for key in ("paths", "is_query", "is_gallery"):
        if key in arrays and arrays[key].shape != (len(embeddings),):
            raise ValueError(f"{path}: {key!r} has shape {arrays[key].shape} but there are {len(embeddings)} embeddings")
    for key in ("is_query", "is_gallery"):
        if key in arrays and arrays[key].dtype != np.bool_:
            raise ValueError(f"{path}: {key!r} must be boolean, got {arrays[key].dtype}")
    metric = str(arrays["metric"]) if "metric" in arrays else None
    return EmbeddingsFile(
        embeddings=embeddings, labels=labels, paths=arrays.get("paths"),
        is_query=arrays.get("is_query"), is_gallery=arrays.get("is_gallery"), metric=metric,
    )
