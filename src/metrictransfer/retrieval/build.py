"""Building an index folder: a gallery embedded by a run's model, a faiss index of it, and the model
exported to ONNX so that ``search`` can embed queries without loading PyTorch (:mod:`.gallery` reads it)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metrictransfer import __version__
from metrictransfer.data.images import ImageFolderDataset
from metrictransfer.data.index import ImageIndex
from metrictransfer.errors import ConfigError, MissingPackageError
from metrictransfer.evaluation.embed import extract_embeddings
from metrictransfer.evaluation.embeddings_file import EmbeddingsFile, save_embeddings
from metrictransfer.evaluation.evaluate import with_test_transform
from metrictransfer.evaluation.faiss_knn import flat_index
from metrictransfer.io import atomic_write_text, file_sha256, staged_path
from metrictransfer.model_export import description_path, export_model
from metrictransfer.output_folder import claim_output, remove_if_unused
from metrictransfer.retrieval.checkpoint_model import model_fingerprint
from metrictransfer.retrieval.gallery import (
    EMBEDDINGS_FILE,
    FAISS_FILE,
    INDEX_FILE,
    INDEX_FORMAT,
    QUERY_MODEL_FILE,
    IndexLock,
    contents_record,
    for_metric,
    list_images,
)
from metrictransfer.runtime.checkpoint import load_embedding_model, resolve_checkpoint


def build_index(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    model_name: str | None = None,
    device: str = "cpu",
    batch_size: int = 128,
    progress: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Embed a gallery with a run's model and write the index folder; returns ``index.json``'s contents.

    The folder is claimed before anything is embedded (:func:`~metrictransfer.output_folder.claim_output`): a
    folder holding anything but an index is refused, an index is replaced only with ``overwrite``, and a
    second build into the same folder is refused while this one holds its lock."""
    model, config = load_embedding_model(checkpoint, name=model_name)
    listed = list_images(images)
    out = Path(out)
    created = not out.exists()
    # clear=False: the old index stays searchable until the new files replace it; index.json, written last,
    # vouches for the others, so a build killed half-way leaves files that are refused, never mixed up.
    lock = claim_output(out, "index", IndexLock(out), overwrite=overwrite, already_holds=_already_holds_index, clear=False)
    failed = True
    try:
        # an unreadable file is an error naming it (an index holds every image it lists: none is skipped)
        gallery = with_test_transform(ImageFolderDataset(listed, bad_hint=f"fix it or remove it from {images}"), config.data)
        embeddings = extract_embeddings(model.to(device), gallery, batch_size, device, progress=progress)[0].numpy()
        meta = _write_index(out, model, model_name, checkpoint, config.eval.metric, listed, embeddings)
        failed = False
        return meta
    finally:
        assert lock.manifest is not None
        lock.manifest.record_present(after_failure=failed)  # what was written, even by a build that failed half-way
        lock.release()
        if failed and created:
            remove_if_unused(out)


def _already_holds_index(folder: Path) -> str | None:
    if not any((folder / name).exists() for name in (INDEX_FILE, EMBEDDINGS_FILE, FAISS_FILE)):
        return None
    return f"{folder} already holds a search index; choose another --out, or add --overwrite to replace it"


def _write_index(
    out: Path,
    model: torch.nn.Module,
    model_name: str | None,
    checkpoint: str | Path,
    metric: str,
    listed: ImageIndex,
    embeddings: np.ndarray,
) -> dict[str, Any]:
    paths = np.asarray([str((listed.root / p).resolve()) for p in listed.paths], dtype=str)
    data = EmbeddingsFile(embeddings, listed.labels, paths, metric=metric)
    save_embeddings(out / EMBEDDINGS_FILE, data)
    meta = {
        "index_format": INDEX_FORMAT,
        "metrictransfer": __version__,
        "checkpoint": str(resolve_checkpoint(checkpoint).resolve()),
        "model": model_name,
        "fingerprint": model_fingerprint(model),
        "metric": metric,
        "count": len(paths),
        "dim": int(embeddings.shape[1]),
        "classes": listed.classes,
        "embeddings": contents_record(data, listed.classes),
        "faiss": _write_faiss(embeddings, metric, out / FAISS_FILE),
        "query_model": _export_query_model(checkpoint, model_name, out / QUERY_MODEL_FILE),
    }
    atomic_write_text(json.dumps(meta, indent=2), out / INDEX_FILE)  # last: it vouches for the files above
    return meta


def _write_faiss(embeddings: np.ndarray, metric: str, path: Path) -> dict[str, Any] | bool:
    """Write ``faiss.index`` (staged: a crash never leaves half of one) and return its record for
    index.json; ``False`` without faiss."""
    try:
        import faiss
    except ImportError:  # optional: exact search with torch instead
        path.unlink(missing_ok=True)
        return False
    index = flat_index(embeddings.shape[1], metric)
    index.add(np.ascontiguousarray(for_metric(embeddings, metric), dtype=np.float32))
    # Serialised here and written by Python: faiss.write_index reports a full disk at its final close only
    # as a printed "close error", and returns as if the truncated file were whole.
    with staged_path(path, size=int(embeddings.nbytes)) as staged:
        staged.write_bytes(faiss.serialize_index(index).tobytes())
        digest = file_sha256(staged)
    names = {faiss.METRIC_L2: "METRIC_L2", faiss.METRIC_INNER_PRODUCT: "METRIC_INNER_PRODUCT"}
    return {"file": FAISS_FILE, "ntotal": int(index.ntotal), "d": int(index.d), "metric_type": names[index.metric_type], "sha256": digest}


def _export_query_model(checkpoint: str | Path, model_name: str | None, path: Path) -> dict[str, Any] | None:
    """The model as ONNX beside the index (checked against PyTorch by the export), for searches that load
    no PyTorch; ``None``, with a warning, where it cannot be: search then loads the run's checkpoint."""
    try:
        described = export_model(checkpoint, "onnx", path, model_name)
    except (MissingPackageError, ConfigError) as err:
        for leftover in (path, description_path(path)):
            leftover.unlink(missing_ok=True)
        warnings.warn(f"search will load PyTorch for every query (several seconds): {err}", stacklevel=2)
        return None
    return {"file": path.name, "description": description_path(path).name, "sha256": described["sha256"]}
