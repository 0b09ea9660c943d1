"""Transfer a frozen source model's embedding space to a target model."""

from __future__ import annotations

import torch
from torch import nn

from metrictransfer.config import RunConfig
from metrictransfer.engine.checkpoint import load_embedding_model
from metrictransfer.losses import build_transfer_loss
from metrictransfer.methods.base import Method, build_label_loss, build_model, label_loss_groups


class TransferMethod(Method):
    """Target trained with a transfer loss against the source's embeddings of the very same views.

    The source is loaded from a checkpoint, frozen (no gradient, never in the optimiser) and kept in
    eval mode, so its batch-norm statistics and outputs do not move. An optional label loss is added
    with ``transfer.metric_weight`` (0 in the paper, so it is not even built then).
    """

    output = "target"

    def __init__(self, config: RunConfig, num_classes: int) -> None:
        super().__init__()
        cfg = config.transfer
        self.target = build_model(config.model)
        self.source, _ = load_embedding_model(cfg.source_checkpoint)
        self.source.requires_grad_(False)
        self.source.eval()
        self.terms = [(t.name, t.weight) for t in cfg.loss_terms()]
        self.transfer_losses = nn.ModuleList(build_transfer_loss(t.name, t.params) for t in cfg.loss_terms())
        self.weight = cfg.weight
        self.metric_weight = cfg.metric_weight
        self.label_loss = (
            build_label_loss(config.metric_loss, num_classes, config.model.embedding_dim)
            if cfg.metric_weight > 0
            else None
        )
        self.proxy_lr_multiplier = config.metric_loss.proxy_lr_multiplier

    def train(self, mode: bool = True) -> "TransferMethod":
        super().train(mode)
        self.source.eval()  # frozen: never in training mode
        return self

    def trainable(self) -> dict[str, nn.Module]:
        return {"target": self.target}

    def parameter_groups(self, lr: float) -> list[dict]:
        groups = [{"params": list(self.target.parameters()), "lr": lr}]
        if self.label_loss is not None:
            groups += label_loss_groups(self.label_loss, lr, self.proxy_lr_multiplier)
        return groups

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            source_embeddings = self.source(images)
        target_embeddings = self.target(images)
        logs = {}
        transfer = target_embeddings.new_zeros(())
        for (name, weight), loss_fn in zip(self.terms, self.transfer_losses):
            value = loss_fn(target_embeddings, source_embeddings)
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
