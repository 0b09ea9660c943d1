"""Classification with knowledge transfer: the embedding-transfer paper's application to classifiers.

A classifier is an ``EmbeddingModel`` whose head outputs one logit per training class. It trains with
cross-entropy, optionally taught by a larger source classifier: either the relaxed contrastive loss on the
two models' penultimate (pooled backbone) features, or classic logit distillation (Hinton et al.: KL
divergence between temperature-softened class distributions, scaled by T²).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from metrictransfer.config import Component, ModelConfig, RunConfig, Strict, check_component
from metrictransfer.data.protocol import RetrievalDataset
from metrictransfer.errors import ConfigError
from metrictransfer.evaluation.kept_views import evaluation_batches
from metrictransfer.losses import TransferInputs, TransferLoss
from metrictransfer.methods.base import SingleModelMethod
from metrictransfer.methods.teaching import build_losses, setup_losses
from metrictransfer.models import EmbeddingModel
from metrictransfer.registry import TRANSFER_LOSSES, register_method
from metrictransfer.runtime.checkpoint import load_source_model
from metrictransfer.runtime.distributed import gather
from metrictransfer.runtime.provenance import check_source_overlap


class ClassifierConfig(Strict):
    """method: classifier — cross-entropy on the training classes, optionally taught by a source classifier."""

    source_checkpoint: str | None = None
    distill: Component = Field(
        default_factory=lambda: Component(name="none"),
        description="none, or a transfer loss: relaxed_contrastive on the penultimate features, hinton on the logits (params: temperature)",
    )
    weight: float = Field(1.0, ge=0, description="weight of the distillation term")
    allow_overlap: bool = Field(
        False,
        description="start even though the source checkpoint trained on some of this run's held-out images "
        "(by default refused: the held-out accuracy would measure what the source memorised)",
    )

    @model_validator(mode="after")
    def _distill(self) -> "ClassifierConfig":
        if self.distill.name != "none":
            check_component(self.distill, TRANSFER_LOSSES, "transfer loss", "classifier.distill")
        elif self.distill.params:
            raise ValueError("classifier.distill.params need a distillation loss (distill.name)")
        return self


@register_method("classifier")
class ClassifierMethod(SingleModelMethod):
    output = "model"
    reports_recall = False  # evaluated by accuracy on held-out images
    params_model = ClassifierConfig
    model: EmbeddingModel

    def __init__(self, config: RunConfig, num_classes: int) -> None:
        super().__init__()
        m: ModelConfig = config.model
        self.model = EmbeddingModel(m.backbone, num_classes, m.pretrained, m.weights, normalize=False)
        cfg = config.section(ClassifierConfig)
        self.weight = cfg.weight
        self.source: EmbeddingModel | None = None
        self.distill: TransferLoss | None = None
        self.source_record: dict[str, Any] | None = None
        if cfg.source_checkpoint:
            source, _, self.source_record = load_source_model(cfg.source_checkpoint)
            self.source = self.freeze(source)
            if self.source.embedding_dim != num_classes:
                raise ConfigError(
                    f"source {cfg.source_checkpoint} has {self.source.embedding_dim} outputs but there are "
                    f"{num_classes} classes: the source must be a classifier of the same classes"
                )
        if cfg.distill.name != "none":
            # Embedding losses compare the two models' penultimate (pooled backbone) features; logit losses, the logits.
            (self.distill,) = build_losses([(cfg.distill.name, cfg.distill.params)], "classifier.distill.params", {"logits", "labels"})
            if self.source is None:
                raise ConfigError("classifier.distill other than 'none' needs classifier.source_checkpoint, and only then")
            setup_losses([self.distill], self.model.feature_dim, self.source.feature_dim, None)

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        """Held-out images to be evaluated on, and a source exactly when there is a distillation loss."""
        if config.data.holdout_images <= 0:
            raise ValueError("method 'classifier' is evaluated on held-out images of its classes: set data.holdout_images (e.g. 0.2)")
        cfg = config.section(ClassifierConfig)
        if (cfg.distill.name != "none") != bool(cfg.source_checkpoint):
            raise ValueError("classifier.distill other than 'none' needs classifier.source_checkpoint, and only then")

    def evaluation_set(self, config: RunConfig, holdout: RetrievalDataset | None) -> RetrievalDataset:
        """Held-out images of the training classes: a classifier cannot be tested on unseen classes."""
        if holdout is None:
            raise ConfigError("method 'classifier' is evaluated on held-out images of its classes: set data.holdout_images (e.g. 0.2)")
        cfg = config.section(ClassifierConfig)
        if cfg.source_checkpoint and not cfg.allow_overlap:  # the source must not have trained on these images
            check_source_overlap(cfg.source_checkpoint, self.source_record, holdout, config.data, "classifier.allow_overlap", images=True)
        return self.validation_set(config, holdout)

    @classmethod
    def validation_unit(cls, config: RunConfig) -> Literal["classes", "images"]:
        return "images"  # a classifier knows only its training classes

    def evaluate(self, dataset: RetrievalDataset, config: RunConfig, device: torch.device, progress: bool = False) -> dict[str, float]:
        """Top-1 accuracy on the held-out images."""
        batches = evaluation_batches(dataset, config.eval.batch_size, device, config.data.num_workers)
        return {"accuracy": accuracy(self.output_model(), batches)}

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        features = self.model.features(images)
        logits = self.model.head(features)
        loss = F.cross_entropy(logits, labels)
        logs = {"ce_loss": loss.item()}
        if self.distill is not None:
            assert self.source is not None  # __init__ refuses a distillation loss without a source
            with torch.no_grad():
                source_features = self.source.features(images)
                source_logits = self.source.head(source_features)
            if "logits" in self.distill.needs:  # per image: this process's batch, nothing to gather
                inputs = TransferInputs(features, source_features, labels=labels, target_logits=logits, source_logits=source_logits)
            else:  # pairwise losses see the global batch
                inputs = TransferInputs(gather(features), gather(source_features), labels=gather(labels))
            term = self.distill.compute(inputs)
            loss = loss + self.weight * term
            logs["distill_loss"] = term.item()
        logs["loss"] = loss.item()
        return loss, logs


@torch.inference_mode()
def accuracy(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy of a classifier over batches of ``(images on its device, labels, indices)``
    (:func:`~metrictransfer.evaluation.kept_views.evaluation_batches`)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for images, labels, _ in batches:
        predicted = model(images).argmax(dim=1).cpu()
        correct += int((predicted == labels).sum())
        total += len(labels)
    model.train(was_training)
    return correct / max(1, total)
