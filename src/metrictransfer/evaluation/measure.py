"""``metrictransfer evaluate`` as a library function: Recall@K, MAP@R and R-Precision (NMI on request) of a
run's model on its test split, or of files of embeddings (several: their L2-normalised concatenation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metrictransfer.errors import ConfigError
from metrictransfer.evaluation.embeddings_file import EmbeddingsFile, check_same_items, load_embeddings
from metrictransfer.evaluation.metrics import check_embeddings, check_ranks, ensemble_embeddings, retrieval_metrics
from metrictransfer.runtime.device import resolve_device

DEFAULT_KS = (1, 2, 4, 8)


@dataclass
class Measured:
    """What was evaluated (``source``, for people), how, and the metrics, as fractions."""

    source: str
    items: int
    query_gallery: bool
    metric: str
    metrics: dict[str, float]


def recall_on_labelled_images(checkpoint: str | Path) -> str:
    """How to measure Recall@K of a run that has no labelled test split: embed labelled images (class
    sub-folders, or a CSV of path,label) into a file that ``evaluate --embeddings`` reads."""
    return (
        f"For Recall@K on labelled images: metrictransfer embed --checkpoint {checkpoint} --images LABELLED_IMAGES --out FILE.npz "
        "then metrictransfer evaluate --embeddings FILE.npz (LABELLED_IMAGES: a folder of class sub-folders or a "
        "CSV of path,label); or train with eval.data (distill --eval-data)"
    )


def measure(
    checkpoint: str | Path | None = None,
    embeddings: Sequence[str | Path] = (),
    query_gallery: bool = False,
    model_name: str | None = None,
    ks: Sequence[int] | None = None,
    metric: str | None = None,
    nmi: bool = False,
    backend: str = "torch",
    device: str | None = None,
    progress: bool = False,
) -> Measured:
    """What ``metrictransfer evaluate`` measures: a run's model (:func:`evaluate_checkpoint`) or files of
    embeddings (:func:`evaluate_embeddings`), one of the two, with the command's checks."""
    if (checkpoint is None) == (not embeddings):
        raise ConfigError("give a run (--checkpoint) or files of embeddings (--embeddings), one of the two")
    if embeddings:
        return evaluate_embeddings(list(embeddings), query_gallery, ks, metric, nmi, backend, device, progress)
    if query_gallery:
        raise ConfigError("--query-gallery applies to --embeddings files that hold is_query and is_gallery")
    assert checkpoint is not None
    return evaluate_checkpoint(checkpoint, model_name, ks, metric, nmi, backend, device, progress)


def evaluate_checkpoint(
    checkpoint: str | Path,
    model_name: str | None = None,
    ks: Sequence[int] | None = None,
    metric: str | None = None,
    nmi: bool = False,
    backend: str = "torch",
    device: str | None = None,
    progress: bool = False,
) -> Measured:
    """A run's model (``model_name``: a cohort's member) on its test split, the run's K and distance unless given."""
    # The model and the test split's loading (timm, torchvision) only here: evaluate --embeddings starts without them.
    from metrictransfer.evaluation.evaluate import embed_split
    from metrictransfer.runtime.checkpoint import load_embedding_model

    model, config = load_embedding_model(checkpoint, name=model_name)
    if config.eval.data is None and config.data.dataset == "unlabelled":
        raise ConfigError(
            f"{checkpoint} trained on unlabelled images and has no labelled test split; its agreement with "
            f"its source is in {Path(checkpoint) / 'results.json'}. {recall_on_labelled_images(checkpoint)}"
        )
    data = embed_split(model, config, "test", device, progress=progress)
    setting = "--k" if ks else "the run's eval.recall_at (choose others with --k)"
    return _measure(
        torch.from_numpy(data.embeddings),
        torch.from_numpy(data.labels),
        {},
        f"{checkpoint}: {(config.eval.data or config.data).dataset} test split",
        list(ks or config.eval.recall_at),
        metric or config.eval.metric,
        setting,
        nmi,
        backend,
        device or config.device,
        progress,
    )


def evaluate_embeddings(
    paths: Sequence[str | Path],
    query_gallery: bool = False,
    ks: Sequence[int] | None = None,
    metric: str | None = None,
    nmi: bool = False,
    backend: str = "torch",
    device: str | None = None,
    progress: bool = False,
) -> Measured:
    """Files of embeddings (``embed``'s .npz or tables); several files of the same items are evaluated as
    their ensemble. ``query_gallery``: the files' is_query / is_gallery masks split the queries from the gallery."""
    if not paths:
        raise ConfigError("give at least one file of embeddings")
    files = [load_embeddings(path, query_gallery=query_gallery) for path in paths]
    data = files[0]
    masks = {"is_query": data.is_query, "is_gallery": data.is_gallery} if query_gallery else {}
    embeddings = _tensor(data.embeddings) if len(files) == 1 else _ensemble(files, [str(p) for p in paths])
    setting = "--k" if ks else "K (choose with --k)"
    source = " + ".join(str(p) for p in paths)
    chosen = metric or data.metric or "euclidean"
    return _measure(
        embeddings,
        torch.from_numpy(data.labels),
        masks,
        source,
        list(ks or DEFAULT_KS),
        chosen,
        setting,
        nmi,
        backend,
        device or "auto",
        progress,
    )


def _measure(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    masks: dict[str, np.ndarray | None],
    source: str,
    ks: list[int],
    metric: str,
    setting: str,
    nmi: bool,
    backend: str,
    device: str,
    progress: bool,
) -> Measured:
    check_embeddings(embeddings, labels)
    check_ranks(ks, labels, masks.get("is_query"), masks.get("is_gallery"), setting=setting, where=source)  # refused, never capped
    metrics = retrieval_metrics(
        embeddings.to(resolve_device(device)),
        labels,
        ks,
        metric,
        nmi=nmi,
        backend=backend,
        progress=progress,
        is_query=masks.get("is_query"),
        is_gallery=masks.get("is_gallery"),
    )
    return Measured(source, len(labels), bool(masks), metric, metrics)


def _ensemble(files: list[EmbeddingsFile], paths: list[str]) -> torch.Tensor:
    """Several models' embeddings of the same items, L2-normalised and concatenated."""
    check_same_items(files, paths)
    return ensemble_embeddings([_tensor(f.embeddings) for f in files])


def _tensor(array: np.ndarray) -> torch.Tensor:
    """An array as a tensor; a table's read-only memory map is read into memory first (torch warns of
    read-only arrays)."""
    return torch.from_numpy(array if array.flags.writeable else np.array(array))
