"""Building an index folder: a gallery embedded by a run's model, a faiss index of it (of the kind
:mod:`.index_kinds` chooses, with its recall measured against exact search), the items' catalogue with
their metadata (:mod:`.catalogue`), and the model exported to ONNX so that ``search`` can embed queries
without loading PyTorch (:mod:`.gallery` reads it)."""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metrictransfer import __version__
from metrictransfer.data.images import ImageFolderDataset
from metrictransfer.data.index import ImageIndex
from metrictransfer.data.workers import embedding_workers
from metrictransfer.errors import ConfigError, MissingPackageError
from metrictransfer.evaluation.embed import extract_embeddings
from metrictransfer.evaluation.embeddings_table import is_table
from metrictransfer.evaluation.evaluate import with_test_transform
from metrictransfer.io import atomic_write_text, file_sha256, staged_path
from metrictransfer.model_export import description_path, export_model
from metrictransfer.output_folder import claim_output, kind_names, remove_if_unused
from metrictransfer.retrieval import index_kinds, table_index
from metrictransfer.retrieval.catalogue import CATALOGUE_FILE, write_catalogue
from metrictransfer.retrieval.gallery import (
    FAISS_FILE,
    INDEX_FILE,
    INDEX_FORMAT,
    QUERY_MODEL_FILE,
    IndexLock,
    faiss_metric_name,
    for_metric,
    list_images,
)
from metrictransfer.retrieval.vector_store import VECTORS_FILE, write_vectors
from metrictransfer.runtime import distributed
from metrictransfer.runtime.checkpoint import load_embedding_model, model_fingerprint, resolve_checkpoint


def build_index(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    model_name: str | None = None,
    device: str = "cpu",
    batch_size: int = 128,
    progress: bool = False,
    overwrite: bool = False,
    kind: str = "auto",
    memory: int | None = None,
) -> dict[str, Any]:
    """Embed a gallery with a run's model and write the index folder; returns ``index.json``'s contents.

    ``kind``: ``auto`` (chosen from the gallery's size and ``memory``, a budget in bytes for the vectors)
    or one of :data:`~metrictransfer.retrieval.index_kinds.KINDS`. A CSV of images may carry metadata
    columns besides ``path`` and ``label``; they are kept in the catalogue for ``search --where``.

    The folder is claimed before anything is embedded (:func:`~metrictransfer.output_folder.claim_output`): a
    folder holding anything but an index is refused, an index is replaced only with ``overwrite``, and a
    second build into the same folder is refused while this one holds its lock."""
    if is_table(images):
        return _build_from_table(checkpoint, Path(images), Path(out), model_name, overwrite, kind, memory)
    if distributed.current().world > 1:
        raise ConfigError(
            f"{images}: under torchrun an index is built from an embeddings table; embed the images first "
            "(metrictransfer embed --checkpoint RUN --images IMAGES --out TABLE, sharded the same way), then index TABLE"
        )
    model, config = load_embedding_model(checkpoint, name=model_name)
    listed = list_images(images)
    columns, metadata = csv_metadata(images)
    index_kinds.plan_index(len(listed.paths), 1, kind=kind)  # a kind this gallery cannot have fails before embedding
    out = Path(out)
    created = not out.exists()
    # clear=False: the old index stays searchable until the new files replace it; index.json, written last,
    # vouches for the others, so a build killed half-way leaves files that are refused, never mixed up.
    lock = claim_output(out, "index", IndexLock(out), overwrite=overwrite, already_holds=_already_holds_index, clear=False)
    failed = True
    try:
        # an unreadable file is an error naming it (an index holds every image it lists: none is skipped)
        gallery = with_test_transform(ImageFolderDataset(listed, bad_hint=f"fix it or remove it from {images}"), config.data)
        workers = embedding_workers(len(gallery), batch_size, config.data.num_workers)  # decoding, not the model, was the wait
        embeddings = extract_embeddings(model.to(device), gallery, batch_size, device, workers, progress=progress)[0].numpy()
        built = _Built(model, model_name, checkpoint, config.eval.metric, kind, memory)
        meta = _write_index(out, built, listed, embeddings, columns, metadata)
        failed = False
        return meta
    finally:
        assert lock.manifest is not None
        lock.manifest.record_present(after_failure=failed)  # what was written, even by a build that failed half-way
        lock.release()
        if failed and created:
            remove_if_unused(out)


def _already_holds_index(folder: Path) -> str | None:
    if not any((folder / name).exists() for name in (INDEX_FILE, VECTORS_FILE, FAISS_FILE, CATALOGUE_FILE)):
        return None
    return f"{folder} already holds a search index; choose another --out, or add --overwrite to replace it"


def csv_metadata(images: str | Path) -> tuple[list[str], list[dict[str, str]] | None]:
    """The metadata columns of a CSV of images (every column but ``path`` and ``label``) and each row's
    values, in the rows' order (:func:`~.gallery.list_images` keeps it); none for a folder or an image."""
    source = Path(images)
    if not (source.is_file() and source.suffix.lower() == ".csv"):
        return [], None
    with open(source, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        columns = [c for c in reader.fieldnames or [] if c not in ("path", "label")]
        rows = [{c: row[c] for c in columns if row.get(c) not in (None, "")} for row in reader]
    return columns, rows


@dataclass(frozen=True)
class _Built:
    """What every file of a new index is written from, besides the gallery itself."""

    model: torch.nn.Module
    model_name: str | None
    checkpoint: str | Path
    metric: str
    kind: str
    memory: int | None


def _write_index(
    out: Path, built: _Built, listed: ImageIndex, embeddings: np.ndarray, columns: list[str], metadata: list[dict[str, str]] | None
) -> dict[str, Any]:
    paths = [str((listed.root / p).resolve()) for p in listed.paths]
    vectors = write_vectors(out / VECTORS_FILE, len(paths), int(embeddings.shape[1]), lambda rows: embeddings[rows])
    ids = np.arange(len(paths), dtype=np.int64)
    names = [listed.classes[x] if x >= 0 else None for x in listed.labels]
    items_sha256 = write_catalogue(out / CATALOGUE_FILE, columns, [(paths, names, metadata)])
    meta = _meta(built, vectors, listed.classes, {"file": CATALOGUE_FILE, "columns": columns, "items_sha256": items_sha256})
    meta["faiss"] = write_faiss(for_metric(embeddings, built.metric), ids, built.metric, out / FAISS_FILE, built.kind, built.memory)
    meta["query_model"] = _export_query_model(built.checkpoint, built.model_name, out / QUERY_MODEL_FILE)
    atomic_write_text(json.dumps(meta, indent=2), out / INDEX_FILE)  # last: it vouches for the files above
    remove_unnamed(out, meta)
    return meta


def remove_unnamed(out: Path, meta: dict[str, Any]) -> None:
    """Delete the index files that ``meta``, just written, does not name: those of the index an
    ``--overwrite`` build replaced (its updates' generations, on-disk lists it no longer has)."""
    named = {INDEX_FILE, meta["vectors"]["file"], meta["catalogue"]["file"]}
    if meta["faiss"]:
        named |= {meta["faiss"]["file"], (meta["faiss"].get("ivfdata") or {}).get("file")}
    if meta["query_model"]:
        named |= {meta["query_model"]["file"], meta["query_model"]["description"]}
    for name in kind_names(out, "index"):
        if name not in named:
            (out / name).unlink(missing_ok=True)


def _meta(built: _Built, vectors: dict[str, Any], classes: list[str], catalogue: dict[str, Any]) -> dict[str, Any]:
    """index.json's records of everything but faiss and the query model."""
    return {
        "index_format": INDEX_FORMAT,
        "metrictransfer": __version__,
        "checkpoint": str(resolve_checkpoint(built.checkpoint).resolve()),
        "model": built.model_name,
        "fingerprint": model_fingerprint(built.model),
        "metric": built.metric,
        "generation": 0,
        "count": vectors["count"],
        "dim": vectors["dim"],
        "classes": classes,
        "vectors": vectors,
        "catalogue": catalogue,
    }


def _build_from_table(
    checkpoint: str | Path, table_dir: Path, out: Path, model_name: str | None, overwrite: bool, kind: str, memory: int | None
) -> dict[str, Any]:
    """:func:`build_index` of an embeddings table (see :mod:`.table_index`): every process of a torchrun
    job takes part; process 0 writes the files and returns index.json's contents (the others: ``{}``)."""
    model, config = load_embedding_model(checkpoint, name=model_name)
    built = _Built(model, model_name, checkpoint, config.eval.metric, kind, memory)
    fingerprint = model_fingerprint(model)
    created = not out.exists()
    locks: list[IndexLock] = []

    def check_and_claim() -> None:  # process 0: the table verified (every byte read once), the folder claimed
        table_index.TableRows(table_dir, fingerprint, built.metric, checkpoint, verify=True)
        locks.append(claim_output(out, "index", IndexLock(out), overwrite=overwrite, already_holds=_already_holds_index, clear=False))

    table_index.on_main(check_and_claim)
    failed = True
    try:
        table = table_index.TableRows(table_dir, fingerprint, built.metric, checkpoint, verify=False)
        plan = index_kinds.plan_index(table.count, table.dim, built.metric, kind, memory)
        table_index.check_shardable(plan)
        written = table_index.on_main(lambda: table_index.write_rows_and_catalogue(table, out / VECTORS_FILE, out / CATALOGUE_FILE))
        rows = table_index.normalised_rows(table, built.metric)
        if plan.kind in ("ivf", "ivfpq"):
            index, ivfdata = table_index.sharded_faiss(plan, rows, table.count, out)
        else:
            index, ivfdata = index_kinds.build(plan, rows, table.count), None

        def finish() -> dict[str, Any]:
            catalogue = {"file": CATALOGUE_FILE, "columns": [], "items_sha256": written["items_sha256"]}
            meta = _meta(built, written["vectors"], table.classes, catalogue)
            meta["faiss"] = faiss_record(index, plan, rows, table.count, out / FAISS_FILE, ivfdata)
            meta["query_model"] = _export_query_model(checkpoint, model_name, out / QUERY_MODEL_FILE)
            atomic_write_text(json.dumps(meta, indent=2), out / INDEX_FILE)  # last: it vouches for the files above
            remove_unnamed(out, meta)
            return meta

        meta = table_index.on_main(finish)
        failed = False
        return meta if distributed.current().main else {}
    finally:
        for lock in locks:
            assert lock.manifest is not None
            lock.manifest.record_present(after_failure=failed)
            lock.release()
            if failed and created:
                remove_if_unused(out)


def write_faiss(
    rows: np.ndarray, ids: np.ndarray, metric: str, path: Path, kind: str = "auto", memory: int | None = None
) -> dict[str, Any] | bool:
    """Plan, build, measure and write a faiss index of ``rows`` (as the index holds them: unit length for
    cosine) under ``ids``; returns its record for index.json, ``False`` without faiss (exact search with
    numpy then), which only ``kind`` auto or flat allows."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        if kind not in ("auto", "flat"):
            raise MissingPackageError(f"--kind {kind} needs faiss: pip install faiss-cpu") from None
        path.unlink(missing_ok=True)
        return False
    count, dim = rows.shape
    plan = index_kinds.plan_index(count, dim, metric, kind, memory)
    index = index_kinds.build(plan, lambda r: rows[r], count, ids=ids)
    return faiss_record(index, plan, lambda r: rows[r], count, path, ids=ids)


def faiss_record(
    index: Any,
    plan: index_kinds.IndexPlan,
    rows: Callable[[np.ndarray], np.ndarray],
    count: int,
    path: Path,
    ivfdata: str | None = None,
    ids: np.ndarray | None = None,
) -> dict[str, Any]:
    """Measure a built index against exact search, write it, and return its record for index.json
    (``ivfdata``: the file beside it holding its inverted lists, when they are on disk)."""
    measured = None if plan.kind == "flat" else index_kinds.measure(index, plan, rows, count, ids=ids)
    record = save_faiss(index, path)
    return {
        **record,
        "kind": plan.kind,
        "factory": plan.factory,
        "params": plan.params,
        "bytes_per_vector": plan.bytes_per_vector,
        "effort": measured.effort if measured else None,
        "refine": plan.refine,
        "measured": asdict(measured) if measured else {"exact": True},
        "ivfdata": {"file": ivfdata, "sha256": file_sha256(path.parent / ivfdata)} if ivfdata else None,
    }


def save_faiss(index: Any, path: Path) -> dict[str, Any]:
    """Write a faiss index file (staged: a crash never leaves half of one); its record's common keys."""
    import faiss

    # Serialised here and written by Python: faiss.write_index reports a full disk at its final close only
    # as a printed "close error", and returns as if the truncated file were whole.
    blob = faiss.serialize_index(index)
    with staged_path(path, size=int(blob.nbytes)) as staged:
        staged.write_bytes(blob.tobytes())
        digest = file_sha256(staged)
    return {"file": path.name, "ntotal": int(index.ntotal), "d": int(index.d), "metric_type": faiss_metric_name(index), "sha256": digest}


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
