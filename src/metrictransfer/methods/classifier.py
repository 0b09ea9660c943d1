"""Classification with knowledge transfer: the embedding-transfer paper's application to classifiers.

A classifier is an ``EmbeddingModel`` whose head outputs one logit per training class. It trains with
cross-entropy, optionally taught by a larger source classifier: either the relaxed contrastive loss on the
two models' penultimate (pooled backbone) features, or classic logit distillation (Hinton et al.: KL
divergence between temperature-softened class distributions, scaled by T²).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from metrictransfer.config import ModelConfig, RunConfig
from metrictransfer.data.multiview import MultiViewDataset, collate_readable
from metrictransfer.data.transforms import build_transform
from metrictransfer.errors import ConfigError
from metrictransfer.losses import RelaxedContrastiveLoss
from metrictransfer.methods.base import SingleModelMethod
from metrictransfer.models import EmbeddingModel
from metrictransfer.runtime.checkpoint import load_embedding_model
from metrictransfer.runtime.distributed import gather


def hinton_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) of the softened distributions, × T² so gradients keep their scale."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    teacher = F.softmax(teacher_logits.detach() / temperature, dim=1)
    return F.kl_div(log_student, teacher, reduction="batchmean") * temperature**2


class ClassifierMethod(SingleModelMethod):
    output = "model"

    def __init__(self, config: RunConfig, num_classes: int) -> None:
        super().__init__()
        m: ModelConfig = config.model
        self.model = EmbeddingModel(m.backbone, num_classes, m.pretrained, m.weights, normalize=False)
        cfg = config.classifier
        self.distill, self.weight, self.temperature = cfg.distill, cfg.weight, cfg.temperature
        self.source = None
        if cfg.source_checkpoint:
            self.source, _ = load_embedding_model(cfg.source_checkpoint)
            if self.source.embedding_dim != num_classes:
                raise ConfigError(
                    f"source {cfg.source_checkpoint} has {self.source.embedding_dim} outputs but there are "
                    f"{num_classes} classes: the source must be a classifier of the same classes"
                )
            self.source.requires_grad_(False)
            self.source.eval()
        self.relaxed = RelaxedContrastiveLoss(cfg.sigma, cfg.delta)

    def train(self, mode: bool = True) -> "ClassifierMethod":
        super().train(mode)
        if self.source is not None:
            self.source.eval()
        return self

    def evaluation_set(self, config: RunConfig, holdout) -> Dataset:
        """Held-out images of the training classes: a classifier cannot be tested on unseen classes."""
        data = config.data
        return MultiViewDataset(holdout, build_transform(data.transform, False, data.image_size, data.normalization))

    def evaluate(self, dataset: Dataset, config: RunConfig, device: torch.device, progress: bool = False) -> dict[str, float]:
        """Top-1 accuracy on the held-out images."""
        loader = DataLoader(dataset, batch_size=config.eval.batch_size, num_workers=config.data.num_workers,
                            collate_fn=collate_readable)
        return {"accuracy": accuracy(self.output_model(), loader)}

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        features = self.model.features(images)
        logits = self.model.head(features)
        loss = F.cross_entropy(logits, labels)
        logs = {"ce_loss": loss.item()}
        if self.distill != "none":
            with torch.no_grad():
                source_features = self.source.features(images)
            if self.distill == "relaxed_contrastive":  # pairwise: over the global batch
                term = self.relaxed(gather(features), gather(source_features))
            else:
                term = hinton_distillation(logits, self.source.head(source_features), self.temperature)
            loss = loss + self.weight * term
            logs["distill_loss"] = term.item()
        logs["loss"] = loss.item()
        return loss, logs


@torch.inference_mode()
def accuracy(model: nn.Module, loader) -> float:
    """Top-1 accuracy of a classifier over a loader of ``(views, label, index)`` with one view."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for views, labels, _ in loader:
        predicted = model(views[:, 0].to(device)).argmax(dim=1).cpu()
        correct += int((predicted == labels).sum())
        total += len(labels)
    model.train(was_training)
    return correct / max(1, total)
