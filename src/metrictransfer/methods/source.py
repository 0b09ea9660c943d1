"""Train a source (or standalone) embedding model with a metric loss on labels."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metrictransfer.config import RunConfig
from metrictransfer.losses import MinedMetricLoss
from metrictransfer.methods.base import Method, build_label_loss, build_model, label_loss_groups
from metrictransfer.registry import register_method
from metrictransfer.runtime.distributed import gather


@register_method("source")
class SourceMethod(Method):
    output = "model"
    label_loss: MinedMetricLoss

    def __init__(self, config: RunConfig, num_classes: int) -> None:
        super().__init__()
        self.model = build_model(config.model)
        self.label_loss = build_label_loss(config.metric_loss, num_classes, config.model.embedding_dim)
        self.proxy_lr_multiplier = config.metric_loss.proxy_lr_multiplier

    def trainable(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": list(self.model.parameters()), "lr": lr}, *label_loss_groups(self.label_loss, lr, self.proxy_lr_multiplier)]

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss = self.label_loss(gather(self.model(images)), gather(labels))  # the global batch
        return loss, {"loss": loss.item()}
