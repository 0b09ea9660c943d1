"""Pseudo-classifier distillation against a queue of teacher features (the scheme of LightlyTrain's
distillation, version 1), as a baseline for distilling a large pretrained model into a small target.

The teacher's (source's) features are L2-normalised and compared with a first-in-first-out queue of the
teacher's normalised features of past batches; each queue row acts as a class of a pseudo-classifier. The
teacher's soft pseudo-labels are ``softmax(z_t · Qᵀ / τ_t)``. The target's embedding goes through a learned
linear projector to the teacher's dimension and is L2-normalised (``z_s``); the loss is the cross-entropy
of the target's ``log_softmax(z_s · Qᵀ / τ_s)`` against the teacher's labels, averaged over the batch.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from metrictransfer.losses.base import TransferInputs, TransferLoss, TransferShapes, check_pair
from metrictransfer.registry import register_transfer_loss


@register_transfer_loss("queue_distill")
class QueueDistillLoss(TransferLoss):
    """``loss(target, source)`` with a queue of ``queue_size`` past teacher features and two temperatures.

    Order within a step: the batch is compared with the queue as it was *before* the step, so an image is
    never compared with its own teacher feature (except at the very first step, below); then, in training
    mode only, the batch's normalised teacher features are enqueued, overwriting the oldest rows once the
    queue is full. In eval mode (validation, or any evaluation pass) the queue does not change. Until the
    queue holds a row (the first step of a run), the batch's own teacher features serve as the queue.
    Only the filled rows are used while the queue fills up.

    The queue, its write position (``queue_pointer``) and its number of filled rows (``queue_count``) are
    buffers built by :meth:`setup`: checkpoints carry them, so a resumed run continues with the same queue.
    Under several processes the methods pass the all-gathered global batch to every process, so every
    process enqueues the same rows in the same order and the queues stay identical without communication.

    Computed in the projector's precision (float32 unless the loss was converted), also for bf16 inputs.
    """

    queue: torch.Tensor
    queue_pointer: torch.Tensor
    queue_count: torch.Tensor

    def __init__(self, queue_size: int = 4096, teacher_temperature: float = 0.07, student_temperature: float = 0.1) -> None:
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"queue_distill: queue_size must be >= 1, got {queue_size}")
        for name, value in (("teacher_temperature", teacher_temperature), ("student_temperature", student_temperature)):
            if not value > 0:
                raise ValueError(f"queue_distill: {name} must be > 0, got {value}")
        self.queue_size = queue_size
        self.teacher_temperature, self.student_temperature = teacher_temperature, student_temperature
        self.projector: nn.Linear | None = None
        self.register_buffer("queue", torch.empty(0, 0))  # (queue_size, source_dim) once set up
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))  # the next row to write
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))  # rows filled so far

    def setup(self, shapes: TransferShapes) -> None:
        self.projector = nn.Linear(shapes.target_dim, shapes.source_dim)
        device = self.queue_pointer.device
        self.queue = torch.zeros(self.queue_size, shapes.source_dim, device=device)
        self.queue_pointer.zero_()
        self.queue_count.zero_()

    def compute(self, inputs: TransferInputs) -> torch.Tensor:
        # not the base's check: one row is enough (forward checks the pair)
        return cast(torch.Tensor, self(inputs.target, inputs.source))

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        check_pair(target, source, "QueueDistillLoss", minimum=1)
        if self.projector is None or self.queue.shape != (self.queue_size, self.projector.out_features):
            raise RuntimeError("QueueDistillLoss.setup(TransferShapes(target_dim, source_dim)) must be called before use")
        if target.shape[1] != self.projector.in_features or source.shape[1] != self.projector.out_features:
            raise ValueError(
                f"QueueDistillLoss: set up for target × source dimensions {self.projector.in_features} × "
                f"{self.projector.out_features}, got {target.shape[1]} × {source.shape[1]}"
            )
        dtype = self.projector.weight.dtype  # bf16 / fp16 inputs are computed in float32
        with torch.no_grad():
            teacher = F.normalize(source.detach().to(dtype), dim=1)
            filled = int(self.queue_count.item())
            # a copy: the enqueue below writes into the buffer that the backward pass would otherwise read
            queue = self.queue[:filled].to(dtype, copy=True) if filled > 0 else teacher
            teacher_labels = F.softmax(teacher @ queue.t() / self.teacher_temperature, dim=1)
        student = F.normalize(self.projector(target.to(dtype)), dim=1)
        log_probs = F.log_softmax(student @ queue.t() / self.student_temperature, dim=1)
        loss = -(teacher_labels * log_probs).sum(dim=1).mean()
        if self.training:
            self.enqueue(teacher)
        return loss

    @torch.no_grad()
    def enqueue(self, features: torch.Tensor) -> None:
        """Write ``features`` (normalised teacher features, one per row) into the queue, first in first out:
        the same result as writing them one by one, so a batch larger than the queue leaves its last rows."""
        n, size = len(features), self.queue_size
        kept = features[-size:]  # what one-by-one writes would leave
        start = self.queue_pointer + (n - len(kept))
        rows = (start + torch.arange(len(kept), device=self.queue.device)) % size
        self.queue.index_copy_(0, rows, kept.to(self.queue.dtype))
        self.queue_pointer.copy_((self.queue_pointer + n) % size)
        self.queue_count.add_(n).clamp_(max=size)

    def extra_repr(self) -> str:
        return (
            f"queue_size={self.queue_size}, teacher_temperature={self.teacher_temperature}, student_temperature={self.student_temperature}"
        )
