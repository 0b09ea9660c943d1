"""Contrastive representation distillation (Tian, Krishnan, Isola, ICLR 2020), as a transfer baseline.

Both models' embeddings are projected to a small space (128-d, L2-normalised). Each image's target
projection must pick out the source's projection of the same image among ``negatives`` others drawn from a
memory bank of source projections of the whole training set, and the other way round; a noise-contrastive
(NCE) estimate with a temperature, its normaliser fixed at the first batch as in the original method. The
banks are updated with momentum after every step and are checkpointed with the loss (buffers).
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from metrictransfer.losses.base import TransferInputs, TransferLoss, TransferShapes, check_pair
from metrictransfer.registry import register_transfer_loss


@register_transfer_loss("crd")
class CRDLoss(TransferLoss):
    """``loss(target, source, indices)``: ``indices`` are the images' positions in the training set.

    The methods call :meth:`setup` (the projection heads, trained with the target) and :meth:`setup_items`
    (the memory banks) before training.
    """

    needs = frozenset({"indices"})
    memory_target: torch.Tensor
    memory_source: torch.Tensor
    normalizers: torch.Tensor

    def __init__(
        self,
        feat_dim: int = 128,
        negatives: int = 4096,
        temperature: float = 0.07,
        momentum: float = 0.5,
    ) -> None:
        super().__init__()
        self.feat_dim, self.negatives, self.temperature, self.momentum = feat_dim, negatives, temperature, momentum
        self.embed_target: nn.Module | None = None
        self.embed_source: nn.Module | None = None
        self.register_buffer("memory_target", torch.empty(0, feat_dim))
        self.register_buffer("memory_source", torch.empty(0, feat_dim))
        self.register_buffer("normalizers", torch.full((2,), -1.0))  # set once, from the first batch

    def setup(self, shapes: TransferShapes) -> None:
        self.embed_target = nn.Linear(shapes.target_dim, self.feat_dim)
        self.embed_source = nn.Linear(shapes.source_dim, self.feat_dim)

    def setup_items(self, num_items: int) -> None:
        """Random unit-scale banks for ``num_items`` training images (uniform in ±1/√(feat_dim/3))."""
        bound = 1.0 / math.sqrt(self.feat_dim / 3)
        for name in ("memory_target", "memory_source"):
            setattr(self, name, torch.rand(num_items, self.feat_dim, device=self.normalizers.device).mul_(2 * bound).sub_(bound))

    def _nce(self, scores: torch.Tensor, num_items: int) -> torch.Tensor:
        """NCE loss of (B × (1 + K)) scores whose first column is the positive."""
        noise = self.negatives / num_items  # K · P_noise
        eps = 1e-7
        positive = scores[:, 0]
        log_d1 = torch.log(positive / (positive + noise + eps))
        log_d0 = torch.log(noise / (scores[:, 1:] + noise + eps))
        return -(log_d1.sum() + log_d0.sum()) / len(scores)

    def compute(self, inputs: TransferInputs) -> torch.Tensor:
        check_pair(inputs.target, inputs.source, "CRD", minimum=1)
        if inputs.indices is None:
            raise ValueError("CRD needs the images' positions in the training set (inputs.indices)")
        return cast(torch.Tensor, self(inputs.target, inputs.source, inputs.indices))

    def forward(self, target: torch.Tensor, source: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        num_items = len(self.memory_source)
        if num_items == 0 or self.embed_target is None or self.embed_source is None:
            raise RuntimeError("CRDLoss.setup(...) and setup_items(...) must be called before use")
        v_target = F.normalize(self.embed_target(target), dim=1)
        v_source = F.normalize(self.embed_source(source.detach().to(target.dtype)), dim=1)
        drawn = torch.randint(num_items, (len(indices), self.negatives), device=indices.device)
        contrast = torch.cat([indices.unsqueeze(1), drawn], dim=1)
        # the source's projection against banked target projections, and the target's against banked source ones
        scores_source = torch.exp(torch.bmm(self.memory_target[contrast], v_source.unsqueeze(2)).squeeze(2) / self.temperature)
        scores_target = torch.exp(torch.bmm(self.memory_source[contrast], v_target.unsqueeze(2)).squeeze(2) / self.temperature)
        if self.normalizers[0] < 0:
            with torch.no_grad():
                self.normalizers.copy_(torch.stack([scores_source.mean(), scores_target.mean()]) * num_items)
        loss = self._nce(scores_source / self.normalizers[0], num_items) + self._nce(scores_target / self.normalizers[1], num_items)
        with torch.no_grad():
            for memory, v in ((self.memory_target, v_target), (self.memory_source, v_source)):
                memory[indices] = F.normalize(memory[indices] * self.momentum + v.detach() * (1 - self.momentum), dim=1)
        return loss

    def extra_repr(self) -> str:
        return f"feat_dim={self.feat_dim}, negatives={self.negatives}, temperature={self.temperature}, momentum={self.momentum}"
