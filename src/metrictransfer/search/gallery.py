"""A searchable gallery: a trained model's embeddings of an image folder or CSV, with their paths.

An index folder holds ``embeddings.npz`` (embeddings, labels, paths), ``index.json`` (the model's
checkpoint and a fingerprint of its weights, the preprocessing, the metric) and ``faiss.index`` when
faiss is installed. Searching embeds the queries with the same model, refusing an index that a
different model built: distances between two models' embeddings mean nothing.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metrictransfer import __version__
from metrictransfer.config import RunConfig
from metrictransfer.data.custom import _is_image, _string_labels
from metrictransfer.data.images import ImageFolderDataset
from metrictransfer.data.index import ImageIndex
from metrictransfer.data.multiview import MultiViewDataset
from metrictransfer.data.transforms import build_transform
from metrictransfer.io import atomic_write_text
from metrictransfer.engine.checkpoint import load_embedding_model, resolve_checkpoint
from metrictransfer.evaluation import extract_embeddings
from metrictransfer.evaluation.embeddings_file import EmbeddingsFile, load_embeddings, save_embeddings
from metrictransfer.evaluation.faiss_knn import flat_index

INDEX_FILE, EMBEDDINGS_FILE, FAISS_FILE = "index.json", "embeddings.npz", "faiss.index"


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
            raise FileNotFoundError(f"no images (.jpg, .jpeg, .png, …) under {source}")
        names = [p.split("/")[0] if "/" in p else None for p in paths]
        return _labelled(source, paths, None if None in names else names)
    if source.suffix.lower() == ".csv" and source.is_file():
        with open(source, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "path" not in rows[0]:
            raise ValueError(f"{source}: expected a header with a 'path' column (and optionally 'label'), got {list(rows[0]) if rows else 'no rows'}")
        paths = [row["path"] for row in rows]
        names = [row["label"] for row in rows] if "label" in rows[0] else None
        return _labelled(source.parent, paths, names)
    raise FileNotFoundError(f"{source} is neither a folder of images nor a .csv file listing them")


def _labelled(root: Path, paths: list[str], names: list[str] | None) -> ImageIndex:
    if names is None:
        return ImageIndex(root, paths, np.full(len(paths), -1), [])
    return _string_labels(root, paths, names)


def _test_transform(config: RunConfig):
    data = config.data
    return build_transform(data.transform, False, data.image_size, data.normalization)


def embed_images(model: torch.nn.Module, config: RunConfig, images: ImageIndex, device: str = "cpu",
                 batch_size: int = 128, progress: bool = False) -> np.ndarray:
    """Embeddings of the listed images with the run's test-time preprocessing; an unreadable file is an
    error naming it."""
    dataset = MultiViewDataset(ImageFolderDataset(images), _test_transform(config))
    embeddings, _ = extract_embeddings(model.to(device), dataset, batch_size, device, progress=progress, desc="embed")
    return embeddings.numpy()


def build_index(checkpoint: str | Path, images: str | Path, out: str | Path, model_name: str | None = None,
                device: str = "cpu", batch_size: int = 128, progress: bool = False) -> dict:
    """Embed a gallery with a run's model and write the index folder; returns ``index.json``'s contents."""
    model, config = load_embedding_model(checkpoint, name=model_name)
    listed = list_images(images)
    embeddings = embed_images(model, config, listed, device, batch_size, progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = np.asarray([str((listed.root / p).resolve()) for p in listed.paths], dtype=str)
    save_embeddings(out / EMBEDDINGS_FILE, EmbeddingsFile(embeddings, listed.labels, paths, metric=config.eval.metric))
    with_faiss = _write_faiss(embeddings, config.eval.metric, out / FAISS_FILE)
    meta = {
        "metrictransfer": __version__,
        "checkpoint": str(resolve_checkpoint(checkpoint).resolve()),
        "model": model_name,
        "fingerprint": model_fingerprint(model),
        "metric": config.eval.metric,
        "count": len(paths),
        "dim": int(embeddings.shape[1]),
        "classes": listed.classes,
        "faiss": with_faiss,
    }
    atomic_write_text(json.dumps(meta, indent=2), out / INDEX_FILE)
    return meta


def _write_faiss(embeddings: np.ndarray, metric: str, path: Path) -> bool:
    try:
        import faiss
    except ImportError:  # optional: exact search with torch instead
        path.unlink(missing_ok=True)
        return False
    index = flat_index(embeddings.shape[1], metric)
    index.add(np.ascontiguousarray(_for_metric(embeddings, metric), dtype=np.float32))
    faiss.write_index(index, str(path))
    return True


def _for_metric(x: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


@dataclass
class Neighbour:
    """One search result: the gallery image, its distance to the query, its class name if known."""

    path: str
    distance: float
    label: str | None


class Gallery:
    """An index folder loaded for searching, with the model that built it."""

    def __init__(self, index_dir: str | Path, checkpoint: str | Path | None = None, device: str = "cpu") -> None:
        index_dir = Path(index_dir)
        meta_file = index_dir / INDEX_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(f"no {INDEX_FILE} in {index_dir}: build the index with metrictransfer index")
        self.meta = json.loads(meta_file.read_text())
        self.checkpoint = Path(checkpoint or self.meta["checkpoint"])
        self.model, self.config = load_embedding_model(self.checkpoint, name=self.meta.get("model"))
        if model_fingerprint(self.model) != self.meta["fingerprint"]:
            raise ValueError(
                f"the index {index_dir} was built by a different model than {self.checkpoint} (its weights differ); "
                f"rebuild it: metrictransfer index --checkpoint {self.checkpoint} --images GALLERY --out {index_dir}"
            )
        self.device = device
        self.data = load_embeddings(index_dir / EMBEDDINGS_FILE)
        self.metric = self.meta["metric"]
        self.faiss_index = None
        if self.meta.get("faiss") and (index_dir / FAISS_FILE).is_file():
            try:
                import faiss

                self.faiss_index = faiss.read_index(str(index_dir / FAISS_FILE))
            except ImportError:
                pass  # exact search with torch gives the same neighbours

    def label_name(self, label: int) -> str | None:
        return self.meta["classes"][label] if label >= 0 and self.meta["classes"] else None

    def search(self, queries: list[str | Path], k: int = 10) -> list[list[Neighbour]]:
        """The k nearest gallery images of each query image, nearest first."""
        for q in queries:
            if not Path(q).is_file():
                raise FileNotFoundError(f"query image not found: {q}")
        listed = ImageIndex(Path("/"), [str(Path(q).resolve()) for q in queries], np.full(len(queries), -1), [])
        embedded = embed_images(self.model, self.config, listed, self.device)
        distances, indices = self._knn(embedded, min(k, len(self.data.embeddings)))
        return [
            [Neighbour(str(self.data.paths[j]), float(d), self.label_name(int(self.data.labels[j]))) for d, j in zip(row_d, row_i)]
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
