"""A run's models on its configured data: the test split with the test-time preprocessing, the retrieval
metrics of the epochs that are evaluated (:meth:`~metrictransfer.methods.base.Method.evaluate`), and
a split embedded into an embeddings file (``metrictransfer embed`` and ``evaluate``).

Every dataset is embedded by :func:`~metrictransfer.evaluation.embed.extract_embeddings`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from metrictransfer.config import DataConfig, RunConfig
from metrictransfer.data.holdout import LabelledSubset
from metrictransfer.data.multiview import MultiViewDataset
from metrictransfer.data.protocol import RetrievalDataset, query_gallery
from metrictransfer.data.registry import build_dataset
from metrictransfer.data.transforms import build_transform
from metrictransfer.evaluation.agreement import check_agreement_ranks
from metrictransfer.evaluation.embed import extract_embeddings
from metrictransfer.evaluation.embeddings_file import EmbeddingsFile
from metrictransfer.evaluation.kept_views import KeptViews
from metrictransfer.evaluation.metrics import check_ranks, ensemble_embeddings, most_negatives, retrieval_metrics
from metrictransfer.models import EmbeddingModel
from metrictransfer.runtime import distributed
from metrictransfer.runtime.device import resolve_device


def with_test_transform(images: RetrievalDataset, data: DataConfig) -> MultiViewDataset:
    """``images`` (yielding ``(image, label)``) as :func:`extract_embeddings` takes them: one view per
    image, with the test-time preprocessing of ``data``."""
    return MultiViewDataset(images, build_transform(data.transform, False, data.image_size, data.normalization))


def test_dataset(config: RunConfig) -> MultiViewDataset:
    """The evaluation set: the test split of ``eval.data`` when given (e.g. training on an unlabelled
    folder), else of ``data``."""
    data = config.eval.data or config.data
    return with_test_transform(build_dataset(data, "test"), data)


def evaluate_model(
    model: nn.Module, dataset: RetrievalDataset, config: RunConfig, device: torch.device, progress: bool = False
) -> dict[str, float]:
    """Recall@K, MAP@R and R-Precision of one model on an evaluation dataset (single test view per image);
    query against gallery when the dataset has ``is_query`` / ``is_gallery`` masks (In-Shop)."""
    return evaluate_models({"model": model}, dataset, config, device, progress)


class _Stacked(torch.nn.Module):
    """Several models' embeddings side by side, so a cohort's evaluation decodes each image once."""

    def __init__(self, models: list[torch.nn.Module]) -> None:
        super().__init__()
        self.models = torch.nn.ModuleList(models)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(images) for m in self.models], dim=1)


def evaluate_models(
    models: Mapping[str, nn.Module], dataset: RetrievalDataset, config: RunConfig, device: torch.device, progress: bool = False
) -> dict[str, float]:
    """One model: its metrics. Several (a cohort): ``name/metric`` for each, ``ensemble/metric`` for the
    concatenation of their L2-normalised embeddings, and the ensemble's again without prefix (the run's
    headline numbers)."""
    stacked = _Stacked(list(models.values()))
    ranks = distributed.current()
    share: Dataset[Any] | RetrievalDataset = dataset
    if ranks.world > 1:  # each process embeds every N-th image; all of them then hold every row, in order
        if isinstance(dataset, KeptViews):
            share = dataset.part(ranks.rank, ranks.world)
        else:  # any object with __len__ and __getitem__ makes a Subset; torch's annotations name its Dataset class
            share = Subset(cast("Dataset[Any]", dataset), range(ranks.rank, len(dataset), ranks.world))
    embeddings, labels, indices = extract_embeddings(
        stacked, share, config.eval.batch_size, device, config.data.num_workers, progress=progress, return_indices=True
    )
    if ranks.world > 1:
        embeddings, labels, indices = (distributed.gather(t.to(device)).cpu() for t in (embeddings, labels, indices))
        order = torch.argsort(indices)
        embeddings, labels, indices = embeddings[order], labels[order], indices[order]
    masks = query_gallery_masks(dataset, indices)

    def metrics(x: torch.Tensor) -> dict[str, float]:
        return retrieval_metrics(
            x, labels, config.eval.recall_at, config.eval.metric, is_query=masks.get("is_query"), is_gallery=masks.get("is_gallery")
        )

    if len(models) == 1:
        return metrics(embeddings)
    parts = embeddings.split([m.embedding_dim for m in models.values()], dim=1)  # type: ignore[no-untyped-call]  # torch leaves Tensor.split unannotated
    row: dict[str, float] = {}
    for name, part in zip(models, parts):
        row.update({f"{name}/{k}": v for k, v in metrics(part).items()})
    ensemble = metrics(ensemble_embeddings(list(parts)))
    row.update({f"ensemble/{k}": v for k, v in ensemble.items()})
    row.update(ensemble)
    return row


def check_recall_ranks(config: RunConfig, sets: Mapping[str, RetrievalDataset | None], method: Any = None) -> None:
    """Refuse, before the first training step, ``eval.recall_at`` ranks that an evaluation set (named by
    its key: ``test``, ``validation``) cannot answer: recall there would be 1.0 whatever the model
    (:func:`~metrictransfer.evaluation.metrics.check_ranks`). Found only at the first evaluation, such a
    rank would end the run after its training, and a run's recipe cannot be changed on ``--resume``.
    Unlabelled held-out images (evaluated by agreement with a source) get the same for
    ``eval.agreement_at`` (:func:`~metrictransfer.evaluation.agreement.check_agreement_ranks`); a
    ``method`` whose evaluation reports no recall (a classifier's accuracy) has nothing to check."""
    if not getattr(method, "reports_recall", True):
        return
    for name, dataset in sets.items():
        if dataset is None:
            continue
        labels = np.asarray(dataset.labels)
        if (labels < 0).all():
            total = len(dataset.dataset) if isinstance(dataset, LabelledSubset) else len(labels)  # the images they were held out of
            check_agreement_ranks(config.eval.agreement_at, len(labels), total, _held_out_by(config, name))
            continue
        if (labels < 0).any():
            continue
        what = dataset.dataset_name
        where, advice = f"the {name} split" + (f" of {what}" if what else ""), ""
        is_query, is_gallery = dataset.is_query, dataset.is_gallery
        if name == "validation" and config.data.validation is not None:  # its size is the recipe's choice
            where = f"the validation split ({len(np.unique(labels))} classes held out by {_held_out_by(config, name)})"
            most = most_negatives(labels, is_query, is_gallery)
            advice = f"use ranks of at most {most:,}, or hold out more classes (raise data.validation.classes)" if most else ""
        check_ranks(config.eval.recall_at, labels, is_query, is_gallery, setting="eval.recall_at", where=where, advice=advice)


def _held_out_by(config: RunConfig, name: str) -> str:
    """The recipe setting that held out the ``name`` set (``test``: held-out images; ``validation``)."""
    validation = config.data.validation
    if name != "validation" or validation is None:
        return f"data.holdout_images={config.data.holdout_images:g}"
    return f"data.validation.folds={validation.folds}" if validation.folds > 1 else f"data.validation.classes={validation.classes}"


def query_gallery_masks(dataset: RetrievalDataset, indices: torch.Tensor) -> dict[str, torch.Tensor]:
    """``is_query`` / ``is_gallery`` of the embedded items (skipped images have no row), if the data has them."""
    return {key: torch.as_tensor(mask)[indices] for key, mask in query_gallery(dataset).items()}


def embed_split(
    model: EmbeddingModel,
    config: RunConfig,
    split: str = "test",
    device: str | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> EmbeddingsFile:
    """Embeddings, labels and item names of one split of a run's dataset, with the test-time transform
    (``test``: of ``eval.data`` when the run has it, the data its test figures came from).

    The file records the dataset, the split and each row's item name (the image path relative to the
    dataset root; for the generated glyphs, see :func:`~metrictransfer.data.registry.glyph_item_names`),
    so that it can be checked against the items it is later used with; ``paths`` are the image paths, or
    ``dataset:split:index``. Rows follow the dataset's order; images skipped as unreadable have no row.
    """
    target = resolve_device(device or config.device)
    data = split_data(config, split)
    dataset = build_dataset(data, split)
    embeddings, labels, indices = extract_embeddings(
        model.to(target),
        with_test_transform(dataset, data),
        batch_size or config.eval.batch_size,
        target,
        data.num_workers,
        progress=progress,
        return_indices=True,
    )
    return rows_file(dataset, embeddings, labels, indices, data.dataset, split, config.eval.metric)


def split_data(config: RunConfig, split: str) -> DataConfig:
    """The data a run's ``split`` comes from: for the test split ``eval.data`` when the run has it (the data
    its test figures came from, as when training on unlabelled images), else ``data``."""
    return config.eval.data if split == "test" and config.eval.data is not None else config.data


def rows_file(
    dataset: RetrievalDataset,
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    dataset_name: str | None,
    split: str | None,
    metric: str,
) -> EmbeddingsFile:
    """The embedded rows of ``dataset`` (``indices``: each row's item; skipped images have none) as an
    :class:`EmbeddingsFile` naming each row's item, path and query/gallery role (``dataset_name`` and
    ``split`` None: images of no dataset, which must name their own paths)."""
    rows = indices.numpy()
    # the stored key "paths" (search shows it): the items' files; for items of no file (glyphs) what earlier
    # versions wrote, dataset:split:index (``items`` identifies them fully)
    paths: Sequence[str] = dataset.item_names if dataset.root is not None else [f"{dataset_name}:{split}:{i}" for i in range(len(dataset))]
    masks = {key: mask[rows] for key, mask in query_gallery(dataset).items()}
    return EmbeddingsFile(
        embeddings.numpy(),
        labels.numpy(),
        paths=np.asarray(paths, dtype=str)[rows],
        metric=metric,
        items=np.asarray(dataset.item_names, dtype=str)[rows],
        dataset=dataset_name,
        split=split,
        **masks,
    )
