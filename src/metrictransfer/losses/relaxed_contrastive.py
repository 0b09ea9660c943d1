"""Relaxed contrastive loss for embedding transfer (Kim, Kim, Cho, Kwak, CVPR 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metrictransfer.losses.base import TransferLoss
from metrictransfer.losses.distances import pairwise_distances
from metrictransfer.registry import register_transfer_loss


@register_transfer_loss("relaxed_contrastive")
class RelaxedContrastiveLoss(TransferLoss):
    """Transfers the source's pairwise similarities to the target as soft (relaxed) pair labels.

    ``loss(target, source)``: ``target`` (N × D_t) carries gradient, ``source`` (N × D_s) is treated
    as constant. The source is L2-normalised and turned into labels ``w_ij = exp(-||ŝ_i - ŝ_j||² / σ)``;
    the target's distances are divided by their row mean (zero diagonal included, not detached) so the
    loss does not depend on the target's scale. Pairs are ordered (i ≠ j) and the sum is divided by N,
    exactly as in the paper's official code.
    """

    def __init__(self, sigma: float = 1.0, delta: float = 1.0) -> None:
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        if delta <= 0:
            raise ValueError(f"delta must be > 0, got {delta}")
        self.sigma = sigma
        self.delta = delta

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        if target.dim() != 2 or source.dim() != 2 or len(target) != len(source):
            raise ValueError(
                "expected target (N × D_t) and source (N × D_s) embeddings of the same N images, "
                f"got shapes {tuple(target.shape)} and {tuple(source.shape)}"
            )
        n = len(target)
        if n < 2:
            raise ValueError(f"the relaxed contrastive loss needs at least 2 embeddings, got {n}")
        with torch.no_grad():
            src = F.normalize(source.detach().to(torch.promote_types(source.dtype, torch.float32)), dim=1)
            weights = torch.exp(-pairwise_distances(src, squared=True) / self.sigma)
        dist = pairwise_distances(target)
        dist = dist / dist.mean(dim=1, keepdim=True)
        weights = weights.to(dist.dtype)
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=dist.device)
        pull = weights * dist.pow(2)
        push = (1.0 - weights) * (self.delta - dist).clamp(min=0).pow(2)
        return ((pull + push) * off_diagonal).sum() / n

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, delta={self.delta}"
