"""A searchable gallery: a trained model's embeddings of an image folder or CSV, with their paths.

An index folder holds ``embeddings.npz`` (embeddings, labels, paths), ``faiss.index`` when faiss is
installed, and ``index.json``: the model's checkpoint and a fingerprint of its weights, the metric, and
what the other two files hold (count, dimension, SHA-256 of the embeddings, paths and labels; for faiss
its ``ntotal``, ``d``, metric type and file digest). Searching embeds the queries with the same model
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
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from metrictransfer import __version__
from metrictransfer.data.custom import QUOTED_ROWS, _is_image, _string_labels, rows_error
from metrictransfer.data.images import ImageFolderDataset
from metrictransfer.data.index import ImageIndex
from metrictransfer.errors import ConfigError, DataError, MissingFileError, SearchIndexError
from metrictransfer.evaluation.embed import extract_embeddings
from metrictransfer.evaluation.embeddings_file import EmbeddingsFile, load_embeddings, save_embeddings
from metrictransfer.evaluation.evaluate import with_test_transform
from metrictransfer.evaluation.faiss_knn import flat_index
from metrictransfer.io import atomic_write_text, file_sha256, staged_path
from metrictransfer.output_folder import OutputLock, claim_output, remove_if_unused
from metrictransfer.runtime.checkpoint import load_embedding_model, resolve_checkpoint

INDEX_FILE, EMBEDDINGS_FILE, FAISS_FILE = "index.json", "embeddings.npz", "faiss.index"
INDEX_FORMAT = 2  # 1 (no "index_format" key): no record of what embeddings.npz and faiss.index hold
METRICS = ("euclidean", "cosine")
FAISS_METRIC = {"euclidean": "METRIC_L2", "cosine": "METRIC_INNER_PRODUCT"}  # what flat_index builds


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of the model's weights, in key order: which model built an index."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def list_images(source: str | Path) -> ImageIndex:
    """Images of a folder (searched recursively; labelled by their top-level sub-folder when every image
    is in one) or of a CSV with a ``path`` column (relative to the CSV's folder) and optional ``label``."""
    source = Path(source)
    if source.is_dir():
        paths = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file() and _is_image(p.name))
        if not paths:
            raise MissingFileError(f"no images (.jpg, .jpeg, .png, …) under {source}")
        names = [p.split("/")[0] if "/" in p else None for p in paths]
        return _labelled(source, paths, None if None in names else cast(list[str], names))
    if not source.exists():
        raise MissingFileError(f"{source} does not exist: expected a folder of images or a .csv file listing them")
    if source.suffix.lower() != ".csv":
        raise ConfigError(f"{source} is neither a folder of images nor a .csv file listing them")
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


def _sha256(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def contents_record(data: EmbeddingsFile, classes: list[str]) -> dict[str, Any]:
    """What ``embeddings.npz`` holds, as index.json records it: a file from another build differs here."""
    embeddings = np.ascontiguousarray(data.embeddings, dtype=np.float32)
    paths = [str(p) for p in (data.paths if data.paths is not None else [])]
    return {
        "file": EMBEDDINGS_FILE,
        "count": int(embeddings.shape[0]),
        "dim": int(embeddings.shape[1]),
        "sha256": _sha256(embeddings.tobytes()),
        "paths_sha256": _sha256("\0".join(paths).encode()),
        "labels_sha256": _sha256(np.asarray(data.labels, dtype=np.int64).tobytes(), json.dumps(classes).encode()),
    }


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


class IndexLock(OutputLock):
    """The lock of an index folder while it is built."""

    activity = "index build"


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
    index.add(np.ascontiguousarray(_for_metric(embeddings, metric), dtype=np.float32))
    # Serialised here and written by Python: faiss.write_index reports a full disk at its final close only
    # as a printed "close error", and returns as if the truncated file were whole.
    with staged_path(path, size=int(embeddings.nbytes)) as staged:
        staged.write_bytes(faiss.serialize_index(index).tobytes())
        digest = file_sha256(staged)
    names = {faiss.METRIC_L2: "METRIC_L2", faiss.METRIC_INNER_PRODUCT: "METRIC_INNER_PRODUCT"}
    return {"file": FAISS_FILE, "ntotal": int(index.ntotal), "d": int(index.d), "metric_type": names[index.metric_type], "sha256": digest}


def _for_metric(x: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":
        return cast(np.ndarray, x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))
    return x


@dataclass
class Neighbour:
    """One search result: the gallery image, its distance to the query, its class name if known."""

    path: str
    distance: float
    label: str | None


class Gallery:
    """An index folder loaded for searching, with the model that built it.

    Loading checks that the folder's files belong together and to the model (see the module's
    docstring): a :class:`MissingFileError` names a missing file, a :class:`SearchIndexError` names the
    file and what differs; both say how to rebuild the index.
    """

    def __init__(self, index_dir: str | Path, checkpoint: str | Path | None = None, device: str = "cpu") -> None:
        self.index_dir = index_dir = Path(index_dir)
        self.meta = _read_meta(index_dir, checkpoint)
        self.checkpoint = Path(checkpoint or self.meta["checkpoint"])
        self._rebuild = _rebuild_hint(index_dir, self.checkpoint)
        self.metric = self.meta["metric"]
        self.data = self._load_embeddings()
        self.faiss_index = self._load_faiss()
        self.model, self.config = load_embedding_model(self.checkpoint, name=self.meta.get("model"))
        if model_fingerprint(self.model) != self.meta["fingerprint"]:
            raise SearchIndexError(
                f"the index {index_dir} was built by a different model than {self.checkpoint} (its weights differ); {self._rebuild}"
            )
        if self.config.eval.metric != self.metric:
            raise SearchIndexError(
                f"{index_dir / INDEX_FILE} says metric {self.metric!r} but the model in "
                f"{self.checkpoint} measures {self.config.eval.metric!r}; {self._rebuild}"
            )
        self.device = device

    def _load_embeddings(self) -> EmbeddingsFile:
        file, record = self.index_dir / EMBEDDINGS_FILE, self.meta["embeddings"]
        if not file.is_file():
            raise MissingFileError(f"the index {self.index_dir} has no {EMBEDDINGS_FILE}; {self._rebuild}")
        try:
            data = load_embeddings(file)
        except (ValueError, OSError) as err:
            raise SearchIndexError(f"{err}; {self._rebuild}") from None
        if data.paths is None:
            raise SearchIndexError(f"{file} has no 'paths' array, so results could not be named; {self._rebuild}")
        found = contents_record(data, self.meta["classes"])
        differs = [
            f"{key} {found[key]} (index.json: {record.get(key)})" if key in ("count", "dim") else key
            for key in ("count", "dim", "sha256", "paths_sha256", "labels_sha256")
            if found[key] != record.get(key)
        ]
        if data.metric is not None and data.metric != self.metric:
            differs.append(f"metric {data.metric!r} (index.json: {self.metric!r})")
        if differs:
            raise SearchIndexError(
                f"{file} does not hold what {INDEX_FILE} describes (it differs in {', '.join(differs)}): "
                f"the files were edited or come from different builds; {self._rebuild}"
            )
        return data

    def _load_faiss(self) -> Any:
        record = self.meta["faiss"]
        if not record:
            return None
        file = self.index_dir / FAISS_FILE
        if not file.is_file():
            raise MissingFileError(f"the index {self.index_dir} has no {FAISS_FILE} though {INDEX_FILE} lists one; {self._rebuild}")
        try:
            import faiss
        except ImportError:
            return None  # exact search with torch gives the same neighbours
        try:
            index = faiss.read_index(str(file))
        except RuntimeError as err:
            raise SearchIndexError(f"{file} is not a readable faiss index ({str(err).strip().splitlines()[-1]}); {self._rebuild}") from None
        count, dim = self.data.embeddings.shape  # checked against index.json already
        expected = {"ntotal": count, "d": dim, "metric_type": FAISS_METRIC[self.metric]}
        found = {
            "ntotal": int(index.ntotal),
            "d": int(index.d),
            "metric_type": "METRIC_L2" if index.metric_type == faiss.METRIC_L2 else "METRIC_INNER_PRODUCT",
        }
        differs = [
            f"{key} {found[key]} (expected {expected[key]})"
            for key in expected
            if found[key] != expected[key] or record.get(key) != expected[key]
        ]
        if not differs and file_sha256(file) != record.get("sha256"):
            differs.append("its contents (SHA-256)")
        if differs:
            raise SearchIndexError(
                f"{file} does not belong to {EMBEDDINGS_FILE} (it differs in {', '.join(differs)}) and "
                f"would return wrong neighbours; {self._rebuild}"
            )
        return index

    def label_name(self, label: int) -> str | None:
        return self.meta["classes"][label] if label >= 0 and self.meta["classes"] else None

    def search(self, queries: list[str | Path], k: int = 10) -> list[list[Neighbour]]:
        """The k nearest gallery images of each query image, nearest first (all of them when the gallery
        holds fewer than k)."""
        if k < 1:
            raise ConfigError(f"--k must be at least 1, got {k}")
        if not queries:
            raise ConfigError("no query images given")
        for q in queries:
            if not Path(q).is_file():
                raise MissingFileError(f"query image not found: {q}")
        listed = ImageIndex(Path("/"), [str(Path(q).resolve()) for q in queries], np.full(len(queries), -1), [])
        images = with_test_transform(ImageFolderDataset(listed, bad_hint="fix it or leave it out of the queries"), self.config.data)
        embedded = extract_embeddings(self.model.to(self.device), images, 128, self.device)[0].numpy()
        distances, indices = self._knn(embedded, min(k, len(self.data.embeddings)))
        paths = self.data.paths
        assert paths is not None  # _load_embeddings refused a file without them
        return [
            [Neighbour(str(paths[j]), float(d), self.label_name(int(self.data.labels[j]))) for d, j in zip(row_d, row_i)]
            for row_d, row_i in zip(distances, indices)
        ]

    def _knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = _for_metric(queries, self.metric).astype(np.float32)
        if self.faiss_index is not None:
            scores, indices = self.faiss_index.search(np.ascontiguousarray(q), k)
            distances = np.sqrt(np.maximum(scores, 0)) if self.metric == "euclidean" else 1.0 - scores
            return distances, indices
        g = torch.from_numpy(_for_metric(self.data.embeddings, self.metric).astype(np.float32))
        qt = torch.from_numpy(q)
        if self.metric == "euclidean":
            d = torch.cdist(qt, g)
        else:
            d = 1.0 - qt @ g.t()
        distances, indices = d.topk(k, dim=1, largest=False)
        return distances.numpy(), indices.numpy()


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
    missing = [key for key in ("checkpoint", "fingerprint", "metric", "count", "dim", "classes", "embeddings", "faiss") if key not in meta]
    if missing:
        raise SearchIndexError(f"{meta_file} lacks {', '.join(missing)}; {rebuild}")
    if not isinstance(meta["embeddings"], dict) or not (meta["faiss"] is False or isinstance(meta["faiss"], dict)):
        raise SearchIndexError(f"{meta_file}: 'embeddings' and 'faiss' are not the records index writes; {rebuild}")
    if meta["metric"] not in METRICS:
        raise SearchIndexError(f"{meta_file} has metric {meta['metric']!r}; valid: {', '.join(METRICS)}; {rebuild}")
    return meta
