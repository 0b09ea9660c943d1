"""Adding items to a built index and removing them, in place and atomically.

An update writes the next generation of the index (see :mod:`.catalogue`): the catalogue's new rows, a
new vectors file (written a chunk at a time from the previous one, memory-mapped) and a new faiss file
under new names, then ``index.json`` naming them, and only then
deletes the previous generation's files. Until ``index.json`` is replaced the previous index is whole and
is what every search reads; a crash at any point leaves it so, and the next update clears what the
crashed one wrote. Ids are stable: an item keeps its id across updates and a removed id is never reused.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from metrictransfer.data.images import ImageFolderDataset
from metrictransfer.data.workers import embedding_workers
from metrictransfer.errors import ConfigError, DataError, MissingFileError
from metrictransfer.evaluation.embed import extract_embeddings
from metrictransfer.evaluation.embeddings_table import is_table
from metrictransfer.evaluation.evaluate import with_test_transform
from metrictransfer.io import atomic_write_text
from metrictransfer.output_folder import claim_output
from metrictransfer.retrieval import index_kinds
from metrictransfer.retrieval.build import csv_metadata, save_faiss
from metrictransfer.retrieval.checkpoint_model import CheckpointQueryModel
from metrictransfer.retrieval.gallery import INDEX_FILE, Gallery, IndexLock, for_metric, list_images
from metrictransfer.retrieval.table_index import IVFDATA_FILE, TableRows, ivfdata_record
from metrictransfer.retrieval.vector_store import VECTORS_FILE, write_vectors


def generation_file(name: str, generation: int) -> str:
    """``vectors.npy`` → ``vectors.g3.npy``: each generation's files under their own names."""
    stem, dot, suffix = name.partition(".")
    return name if generation == 0 else f"{stem}.g{generation}{dot}{suffix}"


def read_ids(given: str) -> tuple[list[int], list[str]]:
    """Ids and paths to remove: ``"3,17,20"``, or a CSV file with an ``id`` and/or a ``path`` column."""
    source = Path(given)
    if not source.is_file():
        try:
            return [int(part) for part in given.split(",") if part.strip()], []
        except ValueError:
            raise ConfigError(f"--remove {given!r}: expected item ids like 3,17,20 or a CSV file with an id or path column") from None
    with open(source, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if "id" not in fields and "path" not in fields:
            raise DataError(f"{source}: expected a header with an 'id' or a 'path' column, got {fields}")
        rows = list(reader)
    try:
        ids = [int(row["id"]) for row in rows if (row.get("id") or "").strip()]
    except ValueError as err:
        raise DataError(f"{source}: an 'id' is not an integer ({err})") from None
    paths = [str((source.parent / row["path"]).resolve()) for row in rows if (row.get("path") or "").strip()]
    return ids, paths


def update_index(
    index_dir: str | Path,
    add: str | Path | None = None,
    remove: str | None = None,
    device: str = "cpu",
    batch_size: int = 128,
    progress: bool = False,
) -> dict[str, Any]:
    """Add the images of ``add`` (a folder or CSV, as ``index --images`` takes; a CSV's metadata columns
    must be the index's) and remove the items ``remove`` names; returns the new ``index.json``."""
    if add is None and remove is None:
        raise ConfigError("nothing to change: give --add IMAGES and/or --remove IDS")
    index_dir = Path(index_dir)
    lock = claim_output(index_dir, "index", IndexLock(index_dir), resume=True, clear=False, option="--index")
    try:
        gallery = Gallery(index_dir)
        return _Update(gallery, batch_size, device, progress).apply(add, remove)
    finally:
        assert lock.manifest is not None
        lock.manifest.record_present()
        lock.release()


class _Update:
    def __init__(self, gallery: Gallery, batch_size: int, device: str, progress: bool) -> None:
        self.gallery, self.batch_size, self.device, self.progress = gallery, batch_size, device, progress
        self.generation = gallery.generation + 1
        self.meta: dict[str, Any] = json.loads(json.dumps(gallery.meta))  # a copy to change

    def apply(self, add: str | Path | None, remove: str | None) -> dict[str, Any]:
        g, catalogue = self.gallery, self.gallery.catalogue
        removed = self._ids_to_remove(remove) if remove is not None else np.zeros(0, dtype=np.int64)
        if len(removed) and g.plan.kind == "hnsw" and g.faiss_index is not None:
            raise ConfigError(
                f"{g.index_dir} is an hnsw index, from which faiss cannot remove items; rebuild it without them (or with --kind ivf)"
            )
        new_paths, names, new_vectors, metadata = self._items_to_add(add) if add is not None else ([], [], None, None)
        keep = ~np.isin(g.ids, removed)
        if not keep.any() and not new_paths:
            raise ConfigError("this would leave the index empty; remove the index folder instead")
        with catalogue.db:  # one transaction: the rows of this generation, all or none
            catalogue.discard_after(g.generation)
            catalogue.remove(self.generation, removed.tolist())
            new_ids = catalogue.add(self.generation, new_paths, names, metadata)
        ids = np.concatenate([g.ids[keep], new_ids])
        files = self._write(np.flatnonzero(keep), ids, removed, new_ids, new_vectors)
        self.meta.update(generation=self.generation, count=len(ids))
        found, self.meta["catalogue"]["items_sha256"] = catalogue.items(self.generation)
        assert np.array_equal(found, ids), "the catalogue's rows of this generation are the ones just written"
        atomic_write_text(json.dumps(self.meta, indent=2), g.index_dir / INDEX_FILE)  # the switch to the new generation
        for old in files:
            (g.index_dir / old).unlink(missing_ok=True)
        with catalogue.db:
            catalogue.forget_removed(self.generation)
        return self.meta

    def _ids_to_remove(self, remove: str) -> np.ndarray:
        ids, paths = read_ids(remove)
        known_paths = self.gallery.catalogue.ids_of_paths(paths, self.gallery.generation)
        missing_paths = [p for p in paths if p not in known_paths]
        missing = [int(i) for i in np.asarray(ids, dtype=np.int64)[~np.isin(ids, self.gallery.ids)]]
        if missing or missing_paths:
            shown = ", ".join([str(i) for i in missing[:5]] + missing_paths[:5])
            raise ConfigError(
                f"--remove: {len(missing) + len(missing_paths)} item(s) are not in this index, first: {shown}; nothing was changed"
            )
        return np.unique(np.asarray(ids + [known_paths[p] for p in paths], dtype=np.int64))

    def _items_to_add(self, add: str | Path) -> tuple[list[str], list[str | None], np.ndarray, list[dict[str, str]] | None]:
        """The paths, class names, embeddings and metadata of the items to add: images embedded now by the
        index's model, or the rows of an embeddings table that model wrote (``embed --images``)."""
        g = self.gallery
        if is_table(add):
            table = TableRows(Path(add), g.meta["fingerprint"], g.metric, g.meta["checkpoint"], verify=True)
            paths, names = [str(p) for p in table.items], table.class_names(0, table.count)
            vectors, metadata = table.rows(np.arange(table.count)), None
            self._refuse_present(add, paths)
        else:
            paths, names, vectors, metadata = self._embedded(add)
        self.meta["classes"] += sorted({n for n in names if n is not None} - set(self.meta["classes"]))
        return paths, names, vectors.astype(np.float32), metadata

    def _refuse_present(self, add: str | Path, paths: list[str]) -> None:
        g = self.gallery
        already = sorted(g.catalogue.ids_of_paths(paths, g.generation))
        if already:
            raise ConfigError(
                f"{add}: {len(already)} image(s) are in the index already, first: {already[0]}; remove them first to replace them"
            )

    def _embedded(self, add: str | Path) -> tuple[list[str], list[str | None], np.ndarray, list[dict[str, str]] | None]:
        g = self.gallery
        listed = list_images(add)
        columns, metadata = csv_metadata(add)
        unknown = sorted(set(columns) - set(g.metadata_columns))
        if unknown:
            have = ", ".join(g.metadata_columns) or "none"
            raise ConfigError(f"{add}: metadata column(s) {', '.join(unknown)} are not in this index (its columns: {have})")
        paths = [str((listed.root / p).resolve()) for p in listed.paths]
        self._refuse_present(add, paths)  # before anything is embedded
        checkpoint = g.meta["checkpoint"]
        if not Path(checkpoint).exists():
            raise MissingFileError(f"the run {checkpoint} that built {g.index_dir} is gone; adding items needs its model")
        # refused unless its weights and metric are the ones that built the index
        model = CheckpointQueryModel(Path(checkpoint), g.meta.get("model"), g.meta, g.index_dir, "rebuild the index", self.device)
        dataset = with_test_transform(ImageFolderDataset(listed, bad_hint=f"fix it or remove it from {add}"), model.config.data)
        net = model.model.to(self.device)
        workers = embedding_workers(len(dataset), self.batch_size, model.config.data.num_workers)
        vectors = extract_embeddings(net, dataset, self.batch_size, self.device, workers, progress=self.progress)[0].numpy()
        names = [listed.classes[int(label)] if label >= 0 and listed.classes else None for label in listed.labels]
        return paths, names, vectors, metadata

    def _write(
        self, kept_rows: np.ndarray, ids: np.ndarray, removed: np.ndarray, new_ids: np.ndarray, new_vectors: np.ndarray | None
    ) -> list[str]:
        """Write the new generation's vectors (the kept rows of the previous ones, then the new ones) and
        faiss files; returns the previous generation's names."""
        g, meta = self.gallery, self.meta
        old: list[str] = [meta["vectors"]["file"]]
        vectors_file = generation_file(VECTORS_FILE, self.generation)
        added = new_vectors if new_vectors is not None else np.zeros((0, g.dim), dtype=np.float32)

        def kept_then_added(r: np.ndarray) -> np.ndarray:
            before = r < len(kept_rows)
            return np.concatenate([g.vectors[kept_rows[r[before]]], added[r[~before] - len(kept_rows)]])

        meta["vectors"] = write_vectors(g.index_dir / vectors_file, len(ids), g.dim, kept_then_added)
        if g.faiss_index is not None:
            import faiss

            rows = for_metric(added, g.metric).astype(np.float32)
            faiss_file = g.index_dir / meta["faiss"]["file"]
            on_disk = meta["faiss"].get("ivfdata")
            if on_disk:  # the previous lists are read, never written: a new file receives them and the changes
                old.append(on_disk["file"])
                lists_name = generation_file(IVFDATA_FILE, self.generation)
                index = self._next_on_disk(faiss_file, lists_name, rows, new_ids)
            else:
                index = g.faiss_index
                index_kinds.add_rows(index, lambda r: rows[r], len(rows), new_ids)
            if len(removed):
                index.remove_ids(faiss.IDSelectorBatch(removed))
            old.append(faiss_file.name)
            record = save_faiss(index, g.index_dir / generation_file("faiss.index", self.generation))
            meta["faiss"] = {**meta["faiss"], **record}
            if on_disk:
                meta["faiss"]["ivfdata"] = ivfdata_record(g.index_dir, lists_name)
            if meta["faiss"].get("measured", {}).get("exact") is None:
                meta["faiss"]["measured"]["at_count"] = meta["faiss"]["measured"].get("at_count", g.count)
        current = {vectors_file, *(meta["faiss"] and [meta["faiss"]["file"], (meta["faiss"].get("ivfdata") or {}).get("file")] or [])}
        return [name for name in old if name not in current]

    def _next_on_disk(self, faiss_file: Path, lists_name: str, added: np.ndarray, added_ids: np.ndarray) -> Any:
        """The next generation of an index whose inverted lists are on disk: the previous lists and the
        added items merged into a new lists file (a crashed update's file of that name is replaced)."""
        additions = index_kinds.read_empty(faiss_file)
        index_kinds.add_rows(additions, lambda r: added[r], len(added), added_ids)
        lists = self.gallery.index_dir / lists_name
        lists.unlink(missing_ok=True)
        previous = [index_kinds.faiss_ivf(self.gallery.faiss_index).invlists, index_kinds.faiss_ivf(additions).invlists]
        return index_kinds.merge_on_disk(index_kinds.read_empty(faiss_file), previous, lists, lists_name)
