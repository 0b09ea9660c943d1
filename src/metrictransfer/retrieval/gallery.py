"""A searchable gallery: a trained model's embeddings of an image folder, a CSV or an embeddings table.

An index folder holds ``vectors.npy`` (the embeddings, read memory-mapped: :mod:`.vector_store`),
``catalogue.sqlite`` (each item's id, path, class name and metadata: :mod:`.catalogue`), ``faiss.index``
when faiss is installed, and ``index.json``: the model's checkpoint and a fingerprint of its weights, the
metric, and what the other files hold (count, dimension and SHA-256 of the vectors, a digest of the item
ids; for faiss its ``ntotal``, ``d``, metric type and file digest). Searching embeds the queries with the same model
and checks every file against ``index.json`` first, refusing a folder whose files do not belong
together or to the model: distances between two models' embeddings mean nothing, and a faiss index of
other embeddings returns the wrong neighbours without any error.

``index.json`` is written last, so a build that crashes half-way leaves files that fail these checks
rather than a folder that silently mixes two galleries. Indexes written before these records existed
(no ``index_format``) are refused with the command that rebuilds them: we cannot tell whether their
files belong together.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np

from metrictransfer.data.custom import QUOTED_ROWS, _is_image, _string_labels, rows_error
from metrictransfer.data.index import ImageIndex
from metrictransfer.errors import ConfigError, DataError, MissingFileError, MissingPackageError, SearchIndexError
from metrictransfer.io import file_sha256
from metrictransfer.output_folder import OutputLock
from metrictransfer.retrieval import index_kinds
from metrictransfer.retrieval.catalogue import Catalogue, ItemRecord
from metrictransfer.retrieval.onnx_model import OnnxQueryModel
from metrictransfer.retrieval.vector_store import read_vectors

INDEX_FILE, FAISS_FILE = "index.json", "faiss.index"
QUERY_MODEL_FILE = "model.onnx"  # the run's model, exported for searching without PyTorch
# 1 (no "index_format" key): no record of what the files hold; 2: embeddings.npz, loaded whole; 3: vectors.npy
INDEX_FORMAT = 3
METRICS = ("euclidean", "cosine")
FAISS_METRIC = {"euclidean": "METRIC_L2", "cosine": "METRIC_INNER_PRODUCT"}  # what flat_index builds


def list_images(source: str | Path) -> ImageIndex:
    """Images of a folder (searched recursively; labelled by their top-level sub-folder when every image
    is in one), of a CSV with a ``path`` column (relative to the CSV's folder) and optional ``label``, or
    one image file (unlabelled): what a user points a command at, whichever of the three it is."""
    source = Path(source)
    if source.is_file() and _is_image(source.name):
        return _labelled(source.parent, [source.name], None)
    if source.is_dir():
        paths = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file() and _is_image(p.name))
        if not paths:
            raise MissingFileError(f"no images (.jpg, .jpeg, .png, …) under {source}")
        names = [p.split("/")[0] if "/" in p else None for p in paths]
        return _labelled(source, paths, None if None in names else cast(list[str], names))
    if not source.exists():
        raise MissingFileError(f"{source} does not exist: expected a folder of images, a .csv file listing them or an image file")
    if source.suffix.lower() != ".csv":
        raise ConfigError(f"{source} is neither a folder of images nor a .csv file listing them, nor an image file (.jpg, .png, …)")
    return _read_csv(source)


def _read_csv(source: Path) -> ImageIndex:
    """A CSV of images to index, every row checked before any is refused (one line lists all problems)."""
    rows: list[tuple[int, dict[str, str | None]]] = []
    try:
        with open(source, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            rows = [(reader.line_num, row) for row in reader]  # the line a row ends on, blank lines counted
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{source} is not a readable CSV file: {err}") from None
    if not rows or "path" not in rows[0][1]:
        raise DataError(
            f"{source}: expected a header with a 'path' column (and optionally 'label'), got {list(rows[0][1]) if rows else 'no rows'}"
        )
    columns = ["path", "label"] if "label" in rows[0][1] else ["path"]
    problems: list[tuple[int, str]] = []
    missing: list[tuple[int, str]] = []
    first_line: dict[str, int] = {}
    for line, row in rows:
        empty = [c for c in columns if not (row[c] or "").strip()]  # None: a short row; "": an empty cell
        if empty:
            problems.append((line, f"no {' or '.join(empty)} (every row needs {' and '.join(columns)})"))
        rel = row["path"] or ""
        if "path" not in empty:  # a path may lead anywhere (an index has no splits to keep apart), but only once
            earlier = first_line.setdefault(os.path.normpath(source.parent / rel), line)
            if earlier != line:
                problems.append((line, f"path {rel!r} is listed again (first on line {earlier})"))
            elif not (source.parent / rel).is_file():
                missing.append((line, rel))
    if problems:
        every = sorted(problems + [(line, f"image {rel!r} does not exist") for line, rel in missing])
        raise rows_error(source, every, "each row lists one image once, by its path relative to the CSV's folder")
    if missing:
        shown = ", ".join(f"line {line} {rel!r}" for line, rel in missing[:QUOTED_ROWS])
        raise MissingFileError(
            f"{source} lists {len(missing)} image(s) that do not exist (paths are relative to the CSV's folder), first: {shown}"
        )
    labels = [row["label"] or "" for _, row in rows] if "label" in columns else None
    return _labelled(source.parent, [row["path"] or "" for _, row in rows], labels)


def _labelled(root: Path, paths: list[str], names: list[str] | None) -> ImageIndex:
    if names is None:
        return ImageIndex(root, paths, np.full(len(paths), -1), [])
    return _string_labels(root, paths, names)


class IndexLock(OutputLock):
    """The lock of an index folder while it is built."""

    activity = "index build"


def for_metric(x: np.ndarray, metric: str) -> np.ndarray:
    """Rows as the faiss index holds them: unit length for cosine (inner product), as they are otherwise."""
    if metric == "cosine":
        return cast(np.ndarray, x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))
    return x


def faiss_metric_name(index: Any) -> str:
    import faiss

    return "METRIC_L2" if index.metric_type == faiss.METRIC_L2 else "METRIC_INNER_PRODUCT"


EXACT_FILTERED_BELOW = 20_000  # items passing a filter: searched exactly below this, through the index above it


@dataclass
class Neighbour:
    """One search result: the gallery image, its distance to the query, its class name if known, its
    stable item id and its metadata."""

    path: str
    distance: float
    label: str | None
    id: int = -1
    metadata: dict[str, str] = field(default_factory=dict)


class QueryModel(Protocol):
    """What embeds the query images: the index's exported model, or the run's PyTorch model."""

    def embed(self, paths: list[Path], bad_hint: str) -> np.ndarray: ...


class Gallery:
    """An index folder loaded for searching, with the model that built it.

    Loading checks that the folder's files belong together and to the model (see the module's
    docstring): a :class:`MissingFileError` names a missing file, a :class:`SearchIndexError` names the
    file and what differs; both say how to rebuild the index.

    Queries are embedded by the index's exported ``model.onnx`` when it has one and onnxruntime is
    installed (no PyTorch loaded: a search answers in about a second), else by the run's checkpoint;
    ``checkpoint`` given: by that run's model, which must be the one that built the index.
    """

    def __init__(self, index_dir: str | Path, checkpoint: str | Path | None = None, device: str = "cpu") -> None:
        self.index_dir = index_dir = Path(index_dir)
        self.meta = _read_meta(index_dir, checkpoint)
        self.checkpoint = Path(checkpoint or self.meta["checkpoint"])
        self._rebuild = _rebuild_hint(index_dir, self.checkpoint)
        self.metric = self.meta["metric"]
        self.generation = int(self.meta.get("generation", 0))
        self.vectors = read_vectors(index_dir, self.meta["vectors"], self._rebuild)
        self.count, self.dim = (int(n) for n in self.vectors.shape)
        self.catalogue, self.ids = self._load_catalogue()
        self.faiss_index = self._load_faiss()
        self.plan = self._plan()
        self.query_model = self._query_model(checkpoint, device)

    @property
    def metadata_columns(self) -> list[str]:
        return self.catalogue.columns

    def _plan(self) -> index_kinds.IndexPlan:
        record = self.meta["faiss"] or {}
        kind = record.get("kind", "flat")  # indexes from before the other kinds are flat
        params = dict(record.get("params", {}))
        plan = index_kinds.IndexPlan(kind, record.get("factory", "Flat"), self.dim, self.metric, params, refine=record.get("refine"))
        if self.faiss_index is not None:
            index_kinds.set_search_effort(self.faiss_index, plan, record.get("effort"))
        return plan

    def _load_catalogue(self) -> tuple[Catalogue, np.ndarray]:
        """The item catalogue and the generation's ids in row order."""
        record = self.meta["catalogue"]
        file = self.index_dir / record["file"]
        if not file.is_file():
            raise MissingFileError(f"the index {self.index_dir} has no {record['file']} though {INDEX_FILE} lists one; {self._rebuild}")
        catalogue = Catalogue(file)
        ids, digest = catalogue.items(self.generation)
        if digest != record.get("items_sha256") or len(ids) != self.count:
            raise SearchIndexError(
                f"{file} does not list the {self.count} items {INDEX_FILE} describes (it lists {len(ids)}, or other paths or ids): "
                f"the files were edited or come from different builds; {self._rebuild}"
            )
        return catalogue, ids

    def _query_model(self, checkpoint: str | Path | None, device: str) -> QueryModel:
        exported = self.meta.get("query_model")
        if checkpoint is None and exported and device in ("cpu", "auto"):
            try:
                return OnnxQueryModel(self.index_dir, exported, self._rebuild)
            except MissingPackageError:
                pass  # the run's own model gives the same embeddings, only slower to load
        from metrictransfer.retrieval.checkpoint_model import CheckpointQueryModel

        return CheckpointQueryModel(self.checkpoint, self.meta.get("model"), self.meta, self.index_dir, self._rebuild, device)

    def _load_faiss(self) -> Any:
        record = self.meta["faiss"]
        if not record:
            return None
        file = self.index_dir / record.get("file", FAISS_FILE)
        if not file.is_file():
            raise MissingFileError(f"the index {self.index_dir} has no {file.name} though {INDEX_FILE} lists one; {self._rebuild}")
        try:
            import faiss
        except ImportError:
            return None  # exact search with numpy gives the same neighbours
        on_disk = record.get("ivfdata")
        if on_disk:  # inverted lists in a file of their own, memory-mapped: checked like the others
            lists = self.index_dir / on_disk["file"]
            if not lists.is_file():
                raise MissingFileError(f"the index {self.index_dir} has no {lists.name} though {INDEX_FILE} lists one; {self._rebuild}")
            if file_sha256(lists) != on_disk.get("sha256"):
                raise SearchIndexError(f"{lists} does not hold what {INDEX_FILE} describes (its SHA-256 differs); {self._rebuild}")
        try:
            index = index_kinds.read_on_disk(file) if on_disk else faiss.read_index(str(file))
        except RuntimeError as err:
            raise SearchIndexError(f"{file} is not a readable faiss index ({str(err).strip().splitlines()[-1]}); {self._rebuild}") from None
        count, dim = self.vectors.shape  # checked against index.json already
        expected = {"ntotal": count, "d": dim, "metric_type": FAISS_METRIC[self.metric]}
        found = {"ntotal": int(index.ntotal), "d": int(index.d), "metric_type": faiss_metric_name(index)}
        differs = [
            f"{key} {found[key]} (expected {expected[key]})"
            for key in expected
            if found[key] != expected[key] or record.get(key) != expected[key]
        ]
        if not differs and file_sha256(file) != record.get("sha256"):
            differs.append("its contents (SHA-256)")
        if differs:
            raise SearchIndexError(
                f"{file} does not belong to {self.meta['vectors'].get('file')} (it differs in {', '.join(differs)}) and "
                f"would return wrong neighbours; {self._rebuild}"
            )
        return index

    def search(self, queries: list[str | Path], k: int = 10, exclude_self: bool = False, **options: Any) -> list[list[Neighbour]]:
        """The k nearest gallery images of each query image, nearest first (all of them when the gallery
        holds fewer than k); ``exclude_self``: a query that is itself in the gallery (the same file) is left
        out of its own results, which then still hold k others. ``options``: those of :meth:`search_vectors`."""
        if not queries:
            raise ConfigError("no query images given")
        for q in queries:
            if not Path(q).is_file():
                raise MissingFileError(f"query image not found: {q}")
        resolved = [Path(q).resolve() for q in queries]
        embedded = self.embed_images(resolved)
        found = self.search_vectors(embedded, k + int(exclude_self), **options)
        if exclude_self:
            found = [[n for n in row if n.path != str(query)][:k] for query, row in zip(resolved, found)]
        return found

    def effort_for(self, nprobe: int | None = None, ef: int | None = None) -> int | None:
        """The search effort a user asked for by name: nprobe for IVF indexes, ef (efSearch) for HNSW ones."""
        if nprobe is not None and ef is not None:
            raise ConfigError("nprobe is for IVF indexes and ef for HNSW ones: give one")
        effort = nprobe if nprobe is not None else ef
        kind = self.plan.kind
        if effort is not None and kind != "flat" and (nprobe is not None) != (kind in ("ivf", "ivfpq")):
            raise ConfigError(f"this index is {kind}: its search effort is {'ef' if kind == 'hnsw' else 'nprobe'}")
        return effort

    def embed_images(self, images: list[Path]) -> np.ndarray:
        """The query images embedded by the index's model (an unreadable image is an error naming it)."""
        return self.query_model.embed(images, "fix it or leave it out of the queries")

    def search_vectors(
        self,
        vectors: np.ndarray,
        k: int = 10,
        *,
        effort: int | None = None,
        refine: int | None = None,
        where: str | None = None,
        exclude_ids: Sequence[int] | None = None,
    ) -> list[list[Neighbour]]:
        """The k nearest items of each embedding (as the model outputs them), nearest first.

        ``effort``: nprobe (IVF kinds) or efSearch (HNSW) instead of the index's measured default.
        ``refine``: take this many candidates from the index and re-rank them by exact distance.
        ``where``: only items whose metadata pass it (see :mod:`.catalogue`); never fewer than k when k pass.
        ``exclude_ids``: items left out of every answer (the query item itself, searching by item)."""
        if k < 1:
            raise ConfigError(f"--k must be at least 1, got {k}")
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ConfigError(f"query embeddings must be N × {self.dim} (this index's dimension), got shape {vectors.shape}")
        if refine is None:  # the index's default: IVF-PQ re-ranks its candidates, the other kinds need not
            refine = max(self.plan.refine, k) if self.plan.refine else None
        refine = refine or None  # 0: no re-ranking, even for IVF-PQ
        if refine is not None and refine < k:
            raise ConfigError(f"--refine {refine}: re-rank at least k = {k} candidates")
        if effort is not None and (self.faiss_index is None or self.plan.kind == "flat"):
            raise ConfigError("--nprobe / --ef apply to ivf, ivfpq and hnsw indexes; this one searches exactly")
        excluded = np.asarray(sorted(set(exclude_ids or [])), dtype=np.int64)
        q = for_metric(vectors, self.metric).astype(np.float32)
        if where is not None:
            distances, ids = self._filtered(q, k, where, excluded, effort, refine)
        else:
            distances, ids = self._knn(q, k + len(excluded), effort, refine)
        return [self._neighbours(row_d, row_i, excluded, k) for row_d, row_i in zip(distances, ids)]

    def _neighbours(self, distances: np.ndarray, ids: np.ndarray, excluded: np.ndarray, k: int) -> list[Neighbour]:
        left_out = set(excluded.tolist())
        kept = [(float(d), int(i)) for d, i in zip(distances, ids) if i >= 0 and int(i) not in left_out][:k]
        records = self.catalogue.describe(i for _, i in kept)
        return [self._neighbour(i, d, records) for d, i in kept]

    def _neighbour(self, item_id: int, distance: float, records: dict[int, ItemRecord]) -> Neighbour:
        if item_id not in records:  # the ids were checked against index.json: only a concurrent edit gets here
            raise SearchIndexError(f"{self.catalogue.path} has no item {item_id} though the index holds it; {self._rebuild}")
        record = records[item_id]
        return Neighbour(record.path, distance, record.label, item_id, record.metadata)

    def row_of(self, item_id: int) -> int:
        """The embeddings' row of an item, or a :class:`ConfigError` for an id this index does not hold."""
        if not isinstance(item_id, (int, np.integer)) or not 0 <= item_id < 2**63:
            raise ConfigError(f"item id {item_id!r} is not in this index (ids are integers from 0)")
        row = int(np.searchsorted(self.ids, item_id))
        if row >= len(self.ids) or self.ids[row] != item_id:
            raise ConfigError(
                f"item id {item_id} is not in this index (ids run from {self.ids[0]} to {self.ids[-1]}, with gaps where items were removed)"
            )
        return row

    def item(self, item_id: int) -> Neighbour:
        self.row_of(item_id)  # an unknown id is refused before the catalogue is asked
        return self._neighbour(item_id, 0.0, self.catalogue.describe([item_id]))

    def vector(self, item_id: int) -> np.ndarray:
        """An item's embedding as the model output it."""
        return np.asarray(self.vectors[self.row_of(item_id)], dtype=np.float32)

    def _knn(self, q: np.ndarray, k: int, effort: int | None = None, refine: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Distances and item ids of each row of ``q``'s k nearest items (-1 where fewer were found)."""
        k = min(k, self.count)
        if self.faiss_index is None:
            distances, rows = exact_knn(q, for_metric(self.vectors, self.metric).astype(np.float32), k, self.metric)
            return distances, self.ids[rows]
        params = index_kinds.search_parameters(self.faiss_index, self.plan, effort)
        scores, ids = index_kinds.search(self.faiss_index, q, min(max(k, refine or 0), self.count), params)
        if refine:
            return self._rerank(q, ids, k)
        return self._distances(scores), ids

    def _distances(self, scores: np.ndarray) -> np.ndarray:
        return np.sqrt(np.maximum(scores, 0)) if self.metric == "euclidean" else 1.0 - scores

    def _rerank(self, q: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest of each query's candidate ids by exact distance."""
        rows = np.where(candidates >= 0, np.searchsorted(self.ids, candidates), -1)
        distances, nearest = index_kinds.rerank(q, rows, self._rows, k, self.metric)
        return distances, np.where(nearest >= 0, self.ids[np.maximum(nearest, 0)], -1)

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        """Embeddings' rows as the index holds them (unit length for cosine)."""
        return for_metric(np.asarray(self.vectors[rows], dtype=np.float32), self.metric)

    def _filtered(
        self, q: np.ndarray, k: int, where: str, excluded: np.ndarray, effort: int | None, refine: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search among the items passing ``where``: exactly when few pass, else through the index told
        to skip the others (faiss's id selector), falling back to exact search for a query that still
        came up short (an IVF's probed clusters may hold fewer than k passing items)."""
        passing = np.setdiff1d(self.catalogue.matching(where, self.generation), excluded)
        k = min(k, len(passing))
        if k == 0:
            return np.zeros((len(q), 0)), np.zeros((len(q), 0), dtype=np.int64)
        if self.faiss_index is not None and len(passing) >= EXACT_FILTERED_BELOW:
            import faiss

            selector = faiss.IDSelectorBatch(passing)
            params = index_kinds.search_parameters(self.faiss_index, self.plan, effort, selector)
            scores, ids = index_kinds.search(self.faiss_index, q, min(max(k, refine or 0), len(passing)), params)
            distances, ids = self._rerank(q, ids, k) if refine else (self._distances(scores), ids)
            short = (ids < 0).any(axis=1)
            if short.any():
                distances[short], ids[short] = self._exact_among(q[short], passing, k)
            return distances, ids
        return self._exact_among(q, passing, k)

    def _exact_among(self, q: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.searchsorted(self.ids, ids)
        vectors = for_metric(np.asarray(self.vectors[rows], dtype=np.float32), self.metric)
        distances, order = exact_knn(q, vectors, k, self.metric)
        return distances, ids[order]


def exact_knn(queries: np.ndarray, gallery: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Distances and indices of each query's k nearest gallery rows, nearest first, ties by index (what
    faiss's flat index returns, without faiss; cosine rows are unit length already)."""
    queries, gallery = queries.astype(np.float64), gallery.astype(np.float64)  # a self-match stays at 0, not 1e-4
    if metric == "euclidean":  # |q|² + |g|² − 2 q·g, clipped at 0 against rounding
        squared = (queries**2).sum(1, keepdims=True) + (gallery**2).sum(1) - 2 * queries @ gallery.T
        distances = np.sqrt(np.maximum(squared, 0))
    else:
        distances = 1.0 - queries @ gallery.T
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), order


def _rebuild_hint(index_dir: Path, checkpoint: str | Path | None) -> str:
    return f"rebuild it: metrictransfer index --checkpoint {checkpoint or 'RUN'} --images GALLERY --out {index_dir} --overwrite"


def _read_meta(index_dir: Path, checkpoint: str | Path | None) -> dict[str, Any]:
    """index.json, refused unless it is this version's and its metric is one we know."""
    rebuild = _rebuild_hint(index_dir, checkpoint)
    if index_dir.is_file():
        hint = f"; did you mean --index {index_dir.parent}?" if index_dir.name == INDEX_FILE else ""
        raise SearchIndexError(f"{index_dir} is a file, not an index folder (the folder metrictransfer index --out wrote){hint}")
    if not index_dir.is_dir():
        raise MissingFileError(
            f"no index folder {index_dir}: build one with metrictransfer index --checkpoint RUN --images GALLERY --out {index_dir}"
        )
    meta_file = index_dir / INDEX_FILE
    if not meta_file.is_file():
        raise MissingFileError(
            f"no {INDEX_FILE} in {index_dir}: build the index with metrictransfer index --checkpoint RUN --images GALLERY --out {index_dir}"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except (ValueError, OSError) as err:
        raise SearchIndexError(f"{meta_file} is not readable JSON ({err}); {rebuild}") from None
    if not isinstance(meta, dict):
        raise SearchIndexError(f"{meta_file} is not an index description; {rebuild}")
    rebuild = _rebuild_hint(index_dir, checkpoint or meta.get("checkpoint"))
    if meta.get("index_format") != INDEX_FORMAT:
        written = meta.get("index_format", "1, from before indexes recorded what their files hold")
        raise SearchIndexError(f"{meta_file} has index format {written}, this metrictransfer reads format {INDEX_FORMAT}; {rebuild}")
    missing = [key for key in ("checkpoint", "fingerprint", "metric", "count", "dim", "vectors", "catalogue", "faiss") if key not in meta]
    if missing:
        raise SearchIndexError(f"{meta_file} lacks {', '.join(missing)}; {rebuild}")
    records = (meta["vectors"], meta["catalogue"])
    if not all(isinstance(r, dict) for r in records) or not (meta["faiss"] is False or isinstance(meta["faiss"], dict)):
        raise SearchIndexError(f"{meta_file}: 'vectors', 'catalogue' and 'faiss' are not the records index writes; {rebuild}")
    if meta["metric"] not in METRICS:
        raise SearchIndexError(f"{meta_file} has metric {meta['metric']!r}; valid: {', '.join(METRICS)}; {rebuild}")
    return meta
