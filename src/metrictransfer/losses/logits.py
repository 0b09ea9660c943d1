"""Classic knowledge distillation on class logits (Hinton, Vinyals, Dean, 2015), for classifier transfer."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F

from metrictransfer.losses.base import TransferInputs, TransferLoss
from metrictransfer.registry import register_transfer_loss


def hinton_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) of the softened distributions, × T² so gradients keep their scale."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    teacher = F.softmax(teacher_logits.detach() / temperature, dim=1)
    return F.kl_div(log_student, teacher, reduction="batchmean") * temperature**2


@register_transfer_loss("hinton")
class HintonLoss(TransferLoss):
    """Logit distillation at a softmax temperature (the loss is scaled by T²); needs both models' logits,
    so only a classifier (``classifier.distill``) can use it."""

    needs = frozenset({"logits"})

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def compute(self, inputs: TransferInputs) -> torch.Tensor:
        if inputs.target_logits is None or inputs.source_logits is None:
            raise ValueError("hinton needs both models' class logits: it is a classifier's distillation loss")
        return cast(torch.Tensor, self(inputs.target_logits, inputs.source_logits))

    def forward(self, target_logits: torch.Tensor, source_logits: torch.Tensor) -> torch.Tensor:
        return hinton_distillation(target_logits, source_logits, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
