"""Relaxed losses for embedding transfer (Kim, Kim, Cho, Kwak, CVPR 2021): the paper's relaxed contrastive
loss, and the relaxed multi-similarity loss of the authors' repository."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F

from metrictransfer.losses.base import TransferInputs, TransferLoss, check_pair
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


@register_transfer_loss("relaxed_ms")
class RelaxedMultiSimilarityLoss(TransferLoss):
    """The relaxed multi-similarity loss, the second relaxed loss of the authors' repository (not in the paper).

    The target's distances ``d`` are divided by their row mean, as in :class:`RelaxedContrastiveLoss`, and
    the source gives relaxed labels ``P_ij = exp(-||ŝ_i - ŝ_j||² / σ)``, with two views of the same image
    (the same ``indices``) counted as certain positives, ``P_ij = 1``. Each anchor i, over every j ≠ i, has
    a pull term ``log(1 + Σ P_ij e^{α d_ij}) / α`` and a push term ``log(1 + Σ (1 - P_ij) e^{β (δ - d_ij)}) / β``
    (multi-similarity's soft maximum over pairs, weighted by the relaxed labels rather than chosen by class);
    the loss is their mean over the anchors whose sum is positive. Defaults: α 1, β 2, δ 1, σ 1, the
    repository's values. Its code pairs the views by position (row i with row i + N/2) and names a variable
    it never defines, so it cannot run; here the views are paired by the images' indices.
    """

    needs = frozenset({"indices"})

    def __init__(self, sigma: float = 1.0, delta: float = 1.0, scale_pos: float = 1.0, scale_neg: float = 2.0) -> None:
        super().__init__()
        for name, value in (("sigma", sigma), ("delta", delta), ("scale_pos", scale_pos), ("scale_neg", scale_neg)):
            if value <= 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.sigma, self.delta, self.scale_pos, self.scale_neg = sigma, delta, scale_pos, scale_neg

    def compute(self, inputs: TransferInputs) -> torch.Tensor:
        check_pair(inputs.target, inputs.source, type(self).__name__)
        return cast(torch.Tensor, self(inputs.target, inputs.source, inputs.indices))

    def forward(self, target: torch.Tensor, source: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        check_pair(target, source, type(self).__name__)
        n = len(target)
        with torch.no_grad():
            src = F.normalize(source.detach().to(torch.promote_types(source.dtype, torch.float32)), dim=1)
            labels = torch.exp(-pairwise_distances(src, squared=True) / self.sigma)
            if indices is not None:  # the other views of the same image: certain positives
                labels = torch.where(indices.view(-1, 1) == indices.view(1, -1), torch.ones_like(labels), labels)
        dist = pairwise_distances(target)
        dist = dist / dist.mean(dim=1, keepdim=True)
        labels = labels.to(dist.dtype)
        others = (~torch.eye(n, dtype=torch.bool, device=dist.device)).to(dist.dtype)
        pull = torch.log1p((others * labels * torch.exp(self.scale_pos * dist)).sum(1)) / self.scale_pos
        push = torch.log1p((others * (1 - labels) * torch.exp(self.scale_neg * (self.delta - dist))).sum(1)) / self.scale_neg
        per_anchor = pull + push
        positive = per_anchor > 0
        return per_anchor[positive].mean() if bool(positive.any()) else per_anchor.sum() * 0

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, delta={self.delta}, scale_pos={self.scale_pos}, scale_neg={self.scale_neg}"
