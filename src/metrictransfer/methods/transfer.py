"""Transfer a frozen source model's embedding space to a target model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from pydantic import Field, model_validator
from torch import nn

from metrictransfer.config import Component, DataConfig, RunConfig, SourceModelConfig, Strict, check_component
from metrictransfer.data.holdout import LabelledSubset
from metrictransfer.data.protocol import RetrievalDataset
from metrictransfer.data.transforms import build_transform, feed_each
from metrictransfer.errors import ConfigError, DataError
from metrictransfer.evaluation.agreement import evaluate_agreement
from metrictransfer.evaluation.embeddings_file import compare_items, load_embeddings
from metrictransfer.evaluation.embeddings_table import TableRows, rows_by_index
from metrictransfer.losses import TransferLoss
from metrictransfer.methods.base import Method, build_label_loss, build_model, label_loss_groups
from metrictransfer.methods.teaching import HintTaps, build_losses, capturing, needs_of, setup_items, setup_losses, teacher_inputs
from metrictransfer.models import EmbeddingModel
from metrictransfer.models.features import last_stages
from metrictransfer.models.pretrained import PretrainedFeatures
from metrictransfer.registry import TRANSFER_LOSSES, register_method
from metrictransfer.runtime.checkpoint import load_source_model
from metrictransfer.runtime.distributed import gather
from metrictransfer.runtime.provenance import check_source_overlap


def source_file_dim(path: str) -> int:
    """The source embeddings' dimension; the table's checksums are read once, by :func:`load_source_table`."""
    return int(load_embeddings(path, verify=False).embeddings.shape[1])


def load_source_table(path: str, dataset: RetrievalDataset) -> torch.Tensor | TableRows:
    """Precomputed source embeddings, one row per training image in the dataset's order: an .npz as one
    float32 tensor, an embeddings table's folder memory-mapped (each step reads its batch's rows).

    The file must say that its rows are this very training set: the training split, the same dataset and
    the same item names in the same order. Rows of other images, or of these in another order, would
    pair each target view with the wrong source embedding and train on noise without any error.
    """
    data = load_embeddings(path)
    redo = f"embed the training split with the source checkpoint: metrictransfer embed --checkpoint SOURCE --split train --out {path}"
    split = dataset.split or "train"
    if data.split is not None and data.split != split:
        raise DataError(f"{path} holds embeddings of the {data.split!r} split, but transfer trains on the {split!r} split; {redo}")
    name = dataset.dataset_name
    if data.dataset is not None and name is not None and data.dataset != name:
        raise DataError(f"{path} holds embeddings of dataset {data.dataset!r}, but training uses {name!r}; {redo}")
    if len(data.embeddings) != len(dataset):
        held_out = " (data.holdout_images holds some of its images out)" if isinstance(dataset, LabelledSubset) else ""
        raise DataError(f"{path} holds {len(data.embeddings)} embeddings but the training set has {len(dataset)} images{held_out}; {redo}")
    if data.items is None:
        raise DataError(
            f"{path} does not name its items (written by an earlier metrictransfer, or by another tool), so it cannot "
            f"be checked to hold this training set in its order; {redo}"
        )
    problem = compare_items(data.items, dataset.item_names)
    if problem:
        raise DataError(f"{path} is not the training set's embeddings: {problem}; {redo}")
    return rows_by_index(data.embeddings)


class TransferTerm(Strict):
    """One term of a weighted sum of transfer losses."""

    name: str
    weight: float = Field(1.0, ge=0)
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _registered(self) -> "TransferTerm":
        check_component(Component(name=self.name, params=self.params), TRANSFER_LOSSES, "transfer loss", "transfer.terms")
        return self


class TransferConfig(Strict):
    source_checkpoint: str | None = None
    source: SourceModelConfig | None = Field(None, description="any timm model as the source (instead of a checkpoint)")
    source_embeddings: str | None = Field(
        None, description="precomputed source embeddings of the training split (not the paper's protocol)"
    )
    loss: Component = Field(
        default_factory=lambda: Component(name="relaxed_contrastive"),
        description="the transfer loss (relaxed_contrastive's params: sigma, delta)",
    )
    terms: list[TransferTerm] = Field(default_factory=list, description="a weighted sum, instead of loss")
    weight: float = Field(1.0, ge=0)
    metric_weight: float = Field(0.0, ge=0, description="weight of the metric loss on labels (paper: 0)")
    hint_stages: int = Field(1, ge=1, description="fitnet/attention: the backbones' last N stages")
    target_layers: list[str] | None = Field(None, description="fitnet/attention: explicit target submodule names")
    source_layers: list[str] | None = Field(None, description="fitnet/attention: explicit source submodule names")
    allow_overlap: bool = Field(
        False,
        description="start even though the source checkpoint trained on some of this run's evaluation classes "
        "(by default refused: the test figures would measure what the source memorised)",
    )

    @model_validator(mode="after")
    def _one_way(self) -> "TransferConfig":
        if self.terms and "loss" in self.model_fields_set:
            raise ValueError("give either transfer.loss or transfer.terms, not both")
        if not self.terms:
            check_component(self.loss, TRANSFER_LOSSES, "transfer loss", "transfer.loss")
        return self

    def loss_terms(self) -> list[TransferTerm]:
        """The configured loss as a list of weighted terms (one term unless ``terms`` is given)."""
        return self.terms or [TransferTerm(name=self.loss.name, weight=1.0, params=self.loss.params)]


@register_method("transfer")
class TransferMethod(Method):
    """Target trained with a transfer loss against the source's embeddings of the very same views.

    The source is loaded from a checkpoint and frozen (:meth:`Method.freeze`), or read from a table of
    precomputed embeddings. An optional label loss is added with ``transfer.metric_weight`` (0 in the
    paper, so it is not even built then).
    """

    output = "target"
    params_model = TransferConfig
    # precomputed embeddings, set by prepare_training_set: an .npz's as a buffer, a table's rows read from disk
    source_table: torch.Tensor | TableRows

    def __init__(self, config: RunConfig, num_classes: int) -> None:
        super().__init__()
        cfg = config.section(TransferConfig)
        self.target = build_model(config.model)
        self.source_file = cfg.source_embeddings
        self.source: EmbeddingModel | PretrainedFeatures | None = None
        self.source_record: dict[str, Any] | None = None
        # (size, normalization) of the target's and the source's inputs when they differ: the loader then
        # makes plain-RGB views that each model resizes and normalises itself (training_loss)
        self.feeds: tuple[tuple[int, str], tuple[int, str]] | None = None
        if cfg.source_checkpoint:
            source, _, self.source_record = load_source_model(cfg.source_checkpoint)
            self.source = self.freeze(source)
        elif cfg.source is not None:
            spec = cfg.source
            self.source = self.freeze(PretrainedFeatures(spec.name, spec.pretrained, spec.weights, spec.features, spec.image_size))
            target_feed = (config.data.image_size, config.data.normalization)
            source_feed = (self.source.image_size, spec.normalization)
            if source_feed != target_feed:
                self.feeds = (target_feed, source_feed)
        terms = cfg.loss_terms()
        self.terms = [(t.name, t.weight) for t in terms]
        provides = {"indices", "labels"} | ({"features"} if isinstance(self.source, EmbeddingModel) else set())
        self.transfer_losses = nn.ModuleList(build_losses([(t.name, t.params) for t in terms], "transfer.loss.params", provides))
        self.hints: HintTaps | None = None
        if "features" in needs_of(self._losses()):
            assert isinstance(self.source, EmbeddingModel)  # build_losses refused losses needing features without one
            self.hints = HintTaps(
                self.target,
                self.source,
                cfg.target_layers or last_stages(self.target, cfg.hint_stages),
                cfg.source_layers or last_stages(self.source, cfg.hint_stages),
                config.data.image_size,
            )
        if self.source is not None:
            source_dim = self.source.embedding_dim
        elif self.source_file is not None:
            source_dim = source_file_dim(self.source_file)
        else:
            raise ConfigError("method 'transfer' needs transfer.source_checkpoint, transfer.source or transfer.source_embeddings")
        setup_losses(self._losses(), config.model.embedding_dim, source_dim, self.hints)
        self.weight = cfg.weight
        self.metric_weight = cfg.metric_weight
        self.label_loss = build_label_loss(config.metric_loss, num_classes, config.model.embedding_dim) if cfg.metric_weight > 0 else None
        self.proxy_lr_multiplier = config.metric_loss.proxy_lr_multiplier
        self.uses_labels = self.label_loss is not None or "labels" in needs_of(self._losses())

    def _losses(self) -> Sequence[TransferLoss]:
        return cast(Sequence[TransferLoss], self.transfer_losses)  # an nn.ModuleList of TransferLoss

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        """Exactly one source: a checkpoint, a timm model or a table of its embeddings."""
        t = config.section(TransferConfig)
        if sum(map(bool, (t.source_checkpoint, t.source_embeddings, t.source))) != 1:
            raise ValueError(
                "method 'transfer' needs exactly one of transfer.source_checkpoint (a run folder or checkpoint file), "
                "transfer.source (any timm model: {name: ..., pretrained: true | weights: FILE}) "
                "and transfer.source_embeddings (embeddings of the training set from `metrictransfer embed`)"
            )

    @classmethod
    def draws_by_class(cls, config: RunConfig) -> bool:
        """Label-free unless a label loss is added or a transfer loss needs labels."""
        cfg = config.section(TransferConfig)
        if cfg.metric_weight > 0:
            return True
        return any("labels" in TRANSFER_LOSSES.get(term.name).needs for term in cfg.loss_terms())

    @classmethod
    def label(cls, config: RunConfig) -> str:
        """The transfer loss(es), weighted, with '+ metric loss' when a label loss is added."""
        cfg = config.section(TransferConfig)
        label = " + ".join(t.name if t.weight == 1 else f"{t.weight:g}·{t.name}" for t in cfg.loss_terms())
        if cfg.metric_weight > 0:
            label += f" + {config.metric_loss.name}"
        return label

    def validation_set(self, config: RunConfig, part: RetrievalDataset) -> RetrievalDataset:
        """Unlabelled validation images are evaluated as the held-out test images are: by agreement."""
        if _unlabelled(part):
            self._check_agreement_possible()
            return part
        return super().validation_set(config, part)

    def _check_agreement_possible(self) -> None:
        if self.source is None:
            raise ConfigError(
                "without labelled evaluation data, a transfer is evaluated by its agreement with the source model, "
                "which a table of source embeddings cannot give: set eval.data (labelled images)"
            )

    def evaluation_set(self, config: RunConfig, holdout: RetrievalDataset | None) -> RetrievalDataset:
        """The test split; refused when the source checkpoint trained on any of its classes (unless
        ``transfer.allow_overlap``). Without labels (unlabelled data, no ``eval.data``): the held-out
        images, on which the target's agreement with the source is measured."""
        if holdout is not None and config.eval.data is None and _unlabelled(holdout):
            self._check_agreement_possible()
            return holdout
        dataset = super().evaluation_set(config, holdout)
        cfg = config.section(TransferConfig)
        if cfg.source_checkpoint and not cfg.allow_overlap:
            check_source_overlap(
                cfg.source_checkpoint, self.source_record, dataset, config.eval.data or config.data, "transfer.allow_overlap"
            )
        return dataset

    def train_transforms(self, data: DataConfig) -> list[Callable[..., Any]]:
        """The data's augmentation; when the source takes another input size or normalisation than the
        target, at the larger of the two sizes and not normalised, so that :func:`to_model_input` makes each
        model's input from the very same augmented view."""
        if self.feeds is None:
            return super().train_transforms(data)
        return [build_transform(data.transform, True, self.train_image_size(data), "none")]

    def train_image_size(self, data: DataConfig) -> int:
        return data.image_size if self.feeds is None else max(self.feeds[0][0], self.feeds[1][0])

    def evaluate(self, dataset: RetrievalDataset, config: RunConfig, device: torch.device, progress: bool = False) -> dict[str, float]:
        """Retrieval metrics on labelled evaluation data; agreement@k with the source on unlabelled held-out images."""
        if not _unlabelled(dataset):
            return super().evaluate(dataset, config, device, progress)
        assert self.source is not None  # evaluation_set and validation_set refused agreement without a source model
        data = config.data
        target_feed = (data.image_size, data.normalization)
        source_feed = self.feeds[1] if self.feeds is not None else target_feed
        return evaluate_agreement(
            self.target, self.source, dataset, data.transform, target_feed, source_feed,
            config.eval.agreement_at, config.eval.metric, config.eval.batch_size, device, data.num_workers, progress,
        )  # fmt: skip

    def prepare_training_set(self, dataset: RetrievalDataset) -> None:
        setup_items(self._losses(), len(dataset))
        if self.source_file is not None:
            table = load_source_table(self.source_file, dataset)
            if isinstance(table, torch.Tensor):
                self.register_buffer("source_table", table, persistent=False)
            else:  # memory-mapped: stays on disk, indexed by the steps' positions (training_loss)
                self.source_table = table

    def trainable(self) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {"target": self.target}
        if any(True for _ in self.transfer_losses.parameters()):  # FitNet's regressors
            modules["transfer_losses"] = self.transfer_losses
        return modules

    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        groups = [{"params": [p for m in self.trainable().values() for p in m.parameters()], "lr": lr}]
        if self.label_loss is not None:
            groups += label_loss_groups(self.label_loss, lr, self.proxy_lr_multiplier)
        return groups

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        target_images = source_images = images
        if self.feeds is not None:  # one augmented view, resized and normalised for each model
            target_images, source_images = feed_each(images, self.feeds)
        with capturing([self.hints.learner, self.hints.teacher] if self.hints else []):
            if self.source is None:  # precomputed: one row per training image, the same for all its views
                source_embeddings = self.source_table[indices]
            else:
                with torch.no_grad():
                    source_embeddings = self.source(source_images)
            target_embeddings = self.target(target_images)
            # Pairwise losses see the global batch (hint losses stay on this process's feature maps).
            target_embeddings, source_embeddings = gather(target_embeddings), gather(source_embeddings)
            labels, indices = gather(labels), gather(indices)
            inputs = teacher_inputs(target_embeddings, source_embeddings, self.hints, indices=indices, labels=labels)
            logs: dict[str, float] = {}
            transfer = target_embeddings.new_zeros(())
            for (name, weight), loss_fn in zip(self.terms, self._losses()):
                value = loss_fn.compute(inputs)
                transfer = transfer + weight * value
                if len(self.terms) > 1:
                    logs[f"{name}_loss"] = value.item()
        loss = self.weight * transfer
        logs["transfer_loss"] = transfer.item()
        if self.label_loss is not None:
            label = self.label_loss(target_embeddings, labels)
            loss = loss + self.metric_weight * label
            logs["metric_loss"] = label.item()
        logs["loss"] = loss.item()
        return loss, logs


def _unlabelled(images: RetrievalDataset) -> bool:
    """Raw unlabelled images (held out of an unlabelled training split: a held-out or validation subset, not
    wrapped with the test transform), evaluated by agreement; the labelled evaluation sets are wrapped."""
    return isinstance(images, LabelledSubset) and bool((images.labels < 0).all())
