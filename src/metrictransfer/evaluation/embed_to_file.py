"""One split of a dataset embedded into a file (``metrictransfer embed``): an ``.npz``, or an embeddings
table (:mod:`~metrictransfer.evaluation.embeddings_table`) for sets too large for memory; by one process, or
sharded over the processes torchrun starts.

Sharded, each of N processes embeds every N-th image, and the file holds every row in the dataset's order,
as one process writes it. An ``.npz`` is gathered whole and written by the first process. A table is not:
the first process creates its memory-mapped ``embeddings.npy`` in a staging folder, every process writes
its own rows into it a chunk at a time, and the first process completes and renames it once all are done.

The model is any module mapping a batch of images to ``(N, model.embedding_dim)`` features: a run's
:class:`~metrictransfer.models.EmbeddingModel`, or a timm model's
:class:`~metrictransfer.models.pretrained.PretrainedFeatures`. Images get the test-time preprocessing of
``preprocess`` (default: the data's own), e.g. the data's test transform at a timm model's input size and
normalisation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from metrictransfer import __version__
from metrictransfer.config import DataConfig, RunConfig
from metrictransfer.data.images import ImageFolderDataset
from metrictransfer.data.index import ImageIndex
from metrictransfer.data.multiview import MultiViewDataset
from metrictransfer.data.protocol import RetrievalDataset, query_gallery
from metrictransfer.data.registry import build_dataset
from metrictransfer.errors import ConfigError
from metrictransfer.evaluation import embeddings_table
from metrictransfer.evaluation.embed import extract_embeddings
from metrictransfer.evaluation.embeddings_file import EmbeddingsFile, save_embeddings
from metrictransfer.evaluation.evaluate import rows_file, split_data, with_test_transform
from metrictransfer.runtime import distributed

#: A table is embedded this many batches at a time: one chunk's embeddings are in memory at once.
CHUNK_BATCHES = 64


@dataclass(frozen=True)
class Written:
    """What :func:`embed_split_to_file` wrote."""

    out: Path
    count: int
    dim: int
    dtype: str
    table: bool  # an embeddings table's folder (else an .npz)


def writes_table(out: str | os.PathLike[str]) -> bool:
    """Whether ``out`` names an embeddings table (anything but an ``.npz``)."""
    return not str(out).endswith(".npz")


def check_output(out: str | os.PathLike[str], dtype: str = "float32", overwrite: bool = False) -> None:
    """Refuse what cannot be written, before any model is built or image embedded: another format than a
    table's in half precision, an existing table without ``overwrite`` (an ``.npz`` is replaced, as ever)."""
    if dtype not in embeddings_table.DTYPES:
        raise ConfigError(f"unknown embeddings dtype {dtype!r}; valid: {', '.join(embeddings_table.DTYPES)}")
    if not writes_table(out):
        if dtype != "float32":
            raise ConfigError(f"--dtype {dtype} applies to embeddings tables; an .npz holds float32 (name a folder in --out for a table)")
        return
    embeddings_table.check_output(Path(out), overwrite)


def embed_split_to_file(
    model: nn.Module,
    config: RunConfig,
    split: str,
    out: str | os.PathLike[str],
    device: torch.device,
    *,
    preprocess: DataConfig | None = None,
    batch_size: int | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    model_record: dict[str, Any] | None = None,
    progress: bool = False,
    chunk_batches: int = CHUNK_BATCHES,
) -> Written:
    """Embed the ``split`` of the run's data (:func:`split_data`) into ``out`` (an ``.npz``, else an embeddings table's folder)
    and record the dataset, the split, each row's item name, the metric (``config.eval.metric``) and
    ``model_record`` (what embedded the rows).

    Under torchrun (an initialised process group) every process calls this with the same arguments and
    embeds its share. Rows follow the dataset's order; images skipped as unreadable have no row."""
    check_output(out, dtype, overwrite)
    data = split_data(config, split)
    dataset = build_dataset(data, split)
    options = _Options(batch_size or config.eval.batch_size, config.data.num_workers, dtype, overwrite, progress, chunk_batches)
    source = _Source(data.dataset, split, config.eval.metric, model_record)
    return _embed_to_file(model, dataset, preprocess or data, source, Path(out), device, options)


def embed_images_to_file(
    model: nn.Module,
    config: RunConfig,
    images: ImageIndex,
    out: str | os.PathLike[str],
    device: torch.device,
    *,
    bad_hint: str,
    preprocess: DataConfig | None = None,
    batch_size: int | None = None,
    dtype: str = "float32",
    overwrite: bool = False,
    model_record: dict[str, Any] | None = None,
    progress: bool = False,
    chunk_batches: int = CHUNK_BATCHES,
) -> Written:
    """Embed any listed images (a folder, a CSV or one image file:
    :func:`~metrictransfer.retrieval.gallery.list_images`) into ``out`` as a split is embedded, so that
    ``evaluate --embeddings`` reads it: each row's item name is its image's resolved path, its label the
    image's class where known (-1 otherwise); no dataset or split is recorded, the rows being of neither.
    Images get ``preprocess`` (default: the test transform of the run's training data). An unreadable
    image is an error naming it and saying ``bad_hint``: the file holds every image listed."""
    check_output(out, dtype, overwrite)
    dataset = ImageFolderDataset(images, bad_hint=bad_hint)
    dataset.item_names = [str((images.root / p).resolve()) for p in images.paths]  # names; reading uses images
    options = _Options(batch_size or config.eval.batch_size, config.data.num_workers, dtype, overwrite, progress, chunk_batches)
    source = _Source(None, None, config.eval.metric, model_record, images.classes)
    return _embed_to_file(model, dataset, preprocess or config.data, source, Path(out), device, options)


@dataclass(frozen=True)
class _Source:
    """What the rows are, as the file records it."""

    dataset: str | None
    split: str | None
    metric: str
    model: dict[str, Any] | None
    classes: list[str] | None = None  # the class names of the labels, for images labelled by folder or CSV


@dataclass(frozen=True)
class _Options:
    """How the rows are embedded and written."""

    batch_size: int
    num_workers: int
    dtype: str
    overwrite: bool
    progress: bool
    chunk_batches: int


def _embed_to_file(
    model: nn.Module, dataset: RetrievalDataset, preprocess: DataConfig, source: _Source, out: Path, device: torch.device, options: _Options
) -> Written:
    """Embed ``dataset`` into ``out``: by this process alone, or its share under torchrun."""
    views = with_test_transform(dataset, preprocess)
    ranks = distributed.current()
    mine = range(ranks.rank, len(dataset), ranks.world)
    model = model.to(device)
    dim = int(cast(Any, model).embedding_dim)
    if not writes_table(out):
        whole = _embed_whole(model, views, mine, source, options, device)
        whole.model = source.model
        if ranks.main:
            save_embeddings(out, whole)
        distributed.barrier()
        return Written(out, len(whole.labels), dim, "float32", table=False)

    staging = _shared_staging(out, len(dataset), dim, options.dtype)
    try:
        rows, labels = _embed_into(
            staging, model, views, mine, options.batch_size, device, options.num_workers, options.progress, options.chunk_batches
        )
        if ranks.world > 1:
            rows, labels = (distributed.gather(t.to(device)).cpu() for t in (rows, labels))
        order = torch.argsort(rows)
        kept, kept_labels = rows[order].numpy(), labels[order].numpy()
        distributed.barrier()  # every process's rows are on disk
        if ranks.main:
            masks = _masks(dataset, kept)
            meta: dict[str, Any] = {
                "dataset": source.dataset,
                "split": source.split,
                "metric": source.metric,
                "model": source.model,
                "written_by": f"metrictransfer {__version__}",
            }
            if source.classes:
                meta["classes"] = source.classes
            items = np.asarray(dataset.item_names, dtype=str)[kept]
            embeddings_table.finish_table(staging, out, kept, kept_labels, items, meta, masks, options.overwrite)
        distributed.barrier()
    except BaseException:
        if ranks.main:
            embeddings_table.remove_staging(staging)
        raise
    return Written(out, len(kept), dim, options.dtype, table=True)


def _embed_whole(
    model: nn.Module, views: MultiViewDataset, mine: range, source: _Source, options: _Options, device: torch.device
) -> EmbeddingsFile:
    """Every row in memory (an .npz is written whole), gathered from all processes in the dataset's order."""
    world = distributed.current().world
    shard = Subset(views, mine) if world > 1 else views
    embeddings, labels, indices = extract_embeddings(
        model, shard, options.batch_size, device, options.num_workers, progress=options.progress, return_indices=True
    )
    if world > 1:
        embeddings, labels, indices = (distributed.gather(t.to(device)).cpu() for t in (embeddings, labels, indices))
        order = torch.argsort(indices)
        embeddings, labels, indices = embeddings[order], labels[order], indices[order]
    return rows_file(views, embeddings, labels, indices, source.dataset, source.split, source.metric)


def _masks(dataset: RetrievalDataset, rows: np.ndarray) -> dict[str, np.ndarray]:
    """``is_query`` / ``is_gallery`` of the embedded rows, where the split has them (In-Shop's test split)."""
    return {key: mask[rows] for key, mask in query_gallery(dataset).items()}


def _shared_staging(out: Path, count: int, dim: int, dtype: str) -> Path:
    """The first process creates the table's staging folder and zero-filled ``embeddings.npy``; every
    process gets its path."""
    ranks = distributed.current()
    staging = None
    if ranks.main:
        staging = embeddings_table.new_staging(out)
        try:
            embeddings_table.create_rows(staging, count, dim, dtype)
        except BaseException:
            embeddings_table.remove_staging(staging)
            raise
    if ranks.world == 1:
        return cast(Path, staging)
    shared = [str(staging) if staging is not None else None]
    dist.broadcast_object_list(shared, src=0)  # also the barrier: the file exists before anyone opens it
    return Path(cast(str, shared[0]))


def _embed_into(
    staging: Path,
    model: nn.Module,
    views: Dataset[Any],
    mine: Sequence[int],
    batch_size: int,
    device: torch.device,
    num_workers: int,
    progress: bool,
    chunk_batches: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's rows written into the table being built, ``chunk_batches`` batches at a time; returns
    the dataset indices written and their labels."""
    rows = embeddings_table.open_rows(staging)
    indices, labels = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, dtype=torch.long)]
    step = batch_size * chunk_batches
    with tqdm(total=len(mine), desc="embed", disable=not progress, leave=False, unit="image") as bar:
        for start in range(0, len(mine), step):
            chunk = mine[start : start + step]
            embeddings, chunk_labels, chunk_indices = extract_embeddings(
                model, Subset(views, chunk), batch_size, device, num_workers, return_indices=True
            )
            rows[chunk_indices.numpy()] = embeddings.numpy()  # converted to the table's dtype
            indices.append(chunk_indices)
            labels.append(chunk_labels)
            bar.update(len(chunk))
    rows.flush()
    del rows
    return torch.cat(indices), torch.cat(labels).long()
