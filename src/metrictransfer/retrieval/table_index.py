"""An index built from an embeddings table (``metrictransfer embed --images … --out DIR``) without ever
holding all its rows, and under torchrun built in shards, the way ``embed`` shards the images.

The table must hold the run's model's embeddings (its model record's weights fingerprint is compared) of
image files (each row's item is an absolute path). Its rows are read memory-mapped, a chunk at a time:
into ``vectors.npy`` and the catalogue first, then into faiss.

With N processes, process 0 trains the quantisers on a sample and writes the empty index; each process
adds its contiguous share of the rows to its own copy and writes that shard; process 0 merges the shards.
IVF-Flat lists are merged on disk with faiss's on-disk inverted lists (``faiss.ivfdata`` beside
``faiss.index``), so an index larger than memory is memory-mapped when searched. IVF-PQ lists are merged in
memory: faiss cannot merge fast-scan lists on disk (its merge_from_multiple refuses them), and their codes
take m/2 + 8 bytes a vector. One process builds the same files; flat and HNSW indexes are built by one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from metrictransfer.errors import ConfigError, SearchIndexError
from metrictransfer.evaluation.embeddings_table import read_table
from metrictransfer.io import file_sha256
from metrictransfer.retrieval import index_kinds
from metrictransfer.retrieval.catalogue import write_catalogue
from metrictransfer.retrieval.gallery import for_metric
from metrictransfer.retrieval.vector_store import write_vectors
from metrictransfer.runtime import distributed

IVFDATA_FILE = "faiss.ivfdata"
_T = TypeVar("_T")


class TableRows:
    """A table checked to belong to a run's model, read lazily: embeddings, item paths and labels stay
    memory-mapped and are read a chunk at a time."""

    def __init__(self, table_dir: Path, fingerprint: str, metric: str, checkpoint: str | Path, verify: bool) -> None:
        table = read_table(table_dir, verify=verify, mapped=True)
        self.meta = table["meta"]
        self.embeddings = table["embeddings"]
        self.count, self.dim = int(self.meta["count"]), int(self.meta["dim"])
        again = f"embed the images again: metrictransfer embed --checkpoint {checkpoint} --images IMAGES --out {table_dir} --overwrite"
        record = self.meta.get("model") or {}
        if record.get("fingerprint") != fingerprint:
            why = "records no weights fingerprint" if "fingerprint" not in record else "was embedded by a model with other weights"
            raise SearchIndexError(f"{table_dir} {why}, so it cannot be indexed for the model of {checkpoint}; {again}")
        if self.meta.get("metric") != metric:
            raise SearchIndexError(f"{table_dir} records metric {self.meta.get('metric')!r} but {checkpoint} measures {metric!r}; {again}")
        self.items, self.labels = table["items"], table["labels"]
        first = str(self.items[0]) if self.count else "/"
        if self.meta.get("dataset") is not None or not os.path.isabs(first):
            raise SearchIndexError(
                f"{table_dir} holds a dataset split ({self.meta.get('dataset')}:{self.meta.get('split')}), whose rows are not image files; "
                f"an index lists images: {again}"
            )
        self.classes: list[str] = [str(c) for c in self.meta.get("classes") or []]

    def rows(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(self.embeddings[indices], dtype=np.float32)

    def class_names(self, start: int, stop: int) -> list[str | None]:
        return [self.classes[x] if 0 <= x < len(self.classes) else None for x in np.asarray(self.labels[start:stop]).tolist()]


def on_main(step: Callable[[], _T], share: bool = True) -> _T:
    """``step`` run by process 0 alone, its result (``share``: else None elsewhere, for results that do not
    pickle) or its failure given to every process: a failure on process 0 must not leave the others
    waiting at the next collective."""
    ranks = distributed.current()
    result: Any = None
    failure: BaseException | None = None
    if ranks.main:
        try:
            result = step()
        except BaseException as err:
            failure = err
    if ranks.world > 1:
        import torch.distributed as dist

        shared = [None if failure is None else f"{type(failure).__name__}: {failure}", result if share else None]
        dist.broadcast_object_list(shared, src=0)
        if shared[0] is not None and not ranks.main:
            raise SearchIndexError(f"the index build failed in process 0: {shared[0]}")
        result = shared[1] if share or not ranks.main else result
    if failure is not None:
        raise failure
    return result  # type: ignore[no-any-return]


def write_rows_and_catalogue(table: TableRows, out: Path, catalogue_path: Path) -> dict[str, Any]:
    """``vectors.npy`` and the catalogue (items 0..n-1 of generation 0) from the table; returns the
    vectors' record and the catalogue's items digest."""
    vectors = write_vectors(out, table.count, table.dim, table.rows)
    batches = (
        ([str(p) for p in table.items[start:stop]], table.class_names(start, stop), None) for start, stop in index_kinds.chunks(table.count)
    )
    items_sha256 = write_catalogue(catalogue_path, [], batches)
    return {"vectors": vectors, "items_sha256": items_sha256}


def sharded_faiss(plan: index_kinds.IndexPlan, rows: Callable[[np.ndarray], np.ndarray], count: int, out: Path) -> tuple[Any, str | None]:
    """The faiss index of rows 0..count-1 (ids = row numbers), each process adding its share; on process 0
    the merged index and, for IVF-Flat, the name of its on-disk lists file in ``out`` (other processes: None)."""
    import faiss

    ranks = distributed.current()
    work = Path(on_main(lambda: tempfile.mkdtemp(prefix=".shards-", dir=out)))
    try:
        on_main(lambda: faiss.write_index(index_kinds.trained_empty(plan, rows, count), str(work / "trained.index")))
        start, stop = count * ranks.rank // ranks.world, count * (ranks.rank + 1) // ranks.world
        shard = faiss.read_index(str(work / "trained.index"))
        index_kinds.add_rows(shard, lambda r: rows(r + start), stop - start, np.arange(start, stop, dtype=np.int64))
        # Written by faiss itself (no serialised copies in memory): a scratch file that a full disk truncates
        # fails to read at the merge, so nothing half-written can reach the index.
        faiss.write_index(shard, str(work / f"shard-{ranks.rank}.index"))
        del shard
        distributed.barrier()  # every shard is written
        merged = on_main(lambda: _merge(plan, work, ranks.world, out), share=False)
        return merged, (IVFDATA_FILE if plan.kind == "ivf" and ranks.main else None)
    finally:
        distributed.barrier()  # every process is done with the work folder
        if ranks.main:
            shutil.rmtree(work, ignore_errors=True)


def _merge(plan: index_kinds.IndexPlan, work: Path, shards: int, out: Path) -> Any:
    """The shards merged into the trained index: on disk for IVF-Flat, in memory for IVF-PQ."""
    import faiss

    merged = faiss.read_index(str(work / "trained.index"))
    files = [str(work / f"shard-{r}.index") for r in range(shards)]
    if plan.kind != "ivf":
        for file in files:
            merged.merge_from(faiss.read_index(file), 0)
        return merged
    shard_indexes = [faiss.read_index(file, faiss.IO_FLAG_MMAP) for file in files]  # read as they are merged
    staged = work / IVFDATA_FILE
    index_kinds.merge_on_disk(merged, [faiss.extract_index_ivf(s).invlists for s in shard_indexes], staged, IVFDATA_FILE)
    os.replace(staged, out / IVFDATA_FILE)  # still mapped by the index: renaming moves no bytes
    return merged


def ivfdata_record(folder: Path, name: str) -> dict[str, Any]:
    return {"file": name, "sha256": file_sha256(folder / name)}


def check_shardable(plan: index_kinds.IndexPlan) -> None:
    if distributed.current().world > 1 and plan.kind not in ("ivf", "ivfpq"):
        raise ConfigError(f"a {plan.kind} index is built by one process: run without torchrun, or choose --kind ivf or ivfpq")


def normalised_rows(table: TableRows, metric: str) -> Callable[[np.ndarray], np.ndarray]:
    """The table's rows as the faiss index holds them (unit length for cosine)."""
    return lambda r: for_metric(table.rows(r), metric).astype(np.float32)
