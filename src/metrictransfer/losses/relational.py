"""Relational knowledge-transfer baselines of the embedding-transfer paper's Table 1: RKD, PKT, DarkRank.

Each is ``loss(target, source)``: ``target`` (N × D_t) carries the gradient, ``source`` (N × D_s) is a
constant. The formulas follow the original authors' published definitions (RKD: Park et al., CVPR 2019;
PKT: Passalis & Tefas, ECCV 2018; DarkRank: Chen et al., AAAI 2018, hard variant), including their
normalisations and reductions, so that the values match the reference file to float64 precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from metrictransfer.losses.distances import pairwise_distances


def _check_pair(target: torch.Tensor, source: torch.Tensor, name: str, minimum: int = 2) -> None:
    if target.dim() != 2 or source.dim() != 2 or len(target) != len(source):
        raise ValueError(
            f"{name}: expected target (N × D_t) and source (N × D_s) embeddings of the same N images, "
            f"got shapes {tuple(target.shape)} and {tuple(source.shape)}"
        )
    if len(target) < minimum:
        raise ValueError(f"{name} needs at least {minimum} embeddings, got {len(target)}")


def _mean_normalised_distances(x: torch.Tensor) -> torch.Tensor:
    d = pairwise_distances(x)
    return d / d[d > 0].mean()


class RKDDistanceLoss(nn.Module):
    """RKD distance term: Smooth-L1 between the two models' distance matrices, each divided by its mean
    off-diagonal distance (so the target's scale is free). Mean over all N² entries."""

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        _check_pair(target, source, "RKD distance")
        with torch.no_grad():
            source_d = _mean_normalised_distances(source.detach())
        return F.smooth_l1_loss(_mean_normalised_distances(target), source_d.to(target.dtype))


def _angles(anchors: torch.Tensor, gram: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """cos ∠(x_j − x_i, x_k − x_i) for anchors i (A × N × N), from Gram products: no A × N × D tensor.

    <x_j − x_i, x_k − x_i> = G_jk − G_ij − G_ik + G_ii; a zero difference (j = i or k = i) gives 0,
    as normalising a zero vector does in the original formula.
    """
    g_anchor = gram[anchors]  # A × N: G_ij
    g_self = gram[anchors, anchors]  # A: G_ii
    inner = gram.unsqueeze(0) - g_anchor.unsqueeze(2) - g_anchor.unsqueeze(1) + g_self.view(-1, 1, 1)
    d = dist[anchors]  # A × N: ||x_j − x_i||, exactly 0 at j = i
    denom = (d.unsqueeze(2) * d.unsqueeze(1)).clamp(min=1e-24)
    nonzero = (d > 0).unsqueeze(2) & (d > 0).unsqueeze(1)
    return torch.where(nonzero, inner / denom, torch.zeros_like(inner))


class RKDAngleLoss(nn.Module):
    """RKD angle term: Smooth-L1 between the cosines of the angles every triple (i, j, k) makes at i,
    mean over all N³ triples.

    The naive form builds N × N × D difference vectors (512 MB at N = D = 512 in float32). Here the
    cosines come from the Gram matrix, ``chunk`` anchors at a time (memory O(chunk · N² + N · D)), and
    each chunk is recomputed in the backward pass instead of stored (activation checkpointing).
    """

    def __init__(self, chunk: int = 32) -> None:
        super().__init__()
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.chunk = chunk

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        _check_pair(target, source, "RKD angle", minimum=3)
        n = len(target)
        with torch.no_grad():
            s = source.detach().to(target.dtype)
            s_gram, s_dist = s @ s.t(), pairwise_distances(s)
        t_gram, t_dist = target @ target.t(), pairwise_distances(target)
        total = target.new_zeros(())
        for start in range(0, n, self.chunk):
            anchors = torch.arange(start, min(start + self.chunk, n), device=target.device)
            part = checkpoint(self._chunk, t_gram, t_dist, s_gram, s_dist, anchors, use_reentrant=False)
            total = total + part
        return total / n**3

    @staticmethod
    def _chunk(t_gram, t_dist, s_gram, s_dist, anchors) -> torch.Tensor:
        with torch.no_grad():
            source_angles = _angles(anchors, s_gram, s_dist)
        return F.smooth_l1_loss(_angles(anchors, t_gram, t_dist), source_angles, reduction="sum")

    def extra_repr(self) -> str:
        return f"chunk={self.chunk}"


class RKDLoss(nn.Module):
    """The RKD method: distance term × ``distance_weight`` (1) + angle term × ``angle_weight`` (2)."""

    def __init__(self, distance_weight: float = 1.0, angle_weight: float = 2.0, chunk: int = 32) -> None:
        super().__init__()
        self.distance_weight, self.angle_weight = distance_weight, angle_weight
        self.distance, self.angle = RKDDistanceLoss(), RKDAngleLoss(chunk)

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return self.distance_weight * self.distance(target, source) + self.angle_weight * self.angle(target, source)


def _pkt_affinity(x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    similarity = (x @ x.t() + 1.0) / 2.0  # cosine similarity mapped to [0, 1]
    return similarity / similarity.sum(dim=1, keepdim=True)


class PKTLoss(nn.Module):
    """Probabilistic knowledge transfer: row-normalised cosine affinities of the two models, compared by
    KL divergence (source ‖ target), averaged over all N² entries."""

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        _check_pair(target, source, "PKT")
        with torch.no_grad():
            p = _pkt_affinity(source.detach().to(target.dtype), self.eps)
        q = _pkt_affinity(target, self.eps)
        return torch.mean(p * torch.log((p + self.eps) / (q + self.eps)))


class DarkRankLoss(nn.Module):
    """DarkRank, hard variant: the negative log-likelihood (Plackett–Luce) of the source's ranking of each
    query's ``list_length`` nearest neighbours under the target's scores ``−α · distance^β``.

    Both embeddings are L2-normalised first (``normalize``), as in the paper's baseline: with β = 3 the
    scores of unnormalised embeddings explode.
    """

    def __init__(self, alpha: float = 3.0, beta: float = 3.0, list_length: int = 4, normalize: bool = True) -> None:
        super().__init__()
        if list_length < 1:
            raise ValueError(f"list_length must be >= 1, got {list_length}")
        self.alpha, self.beta, self.list_length, self.normalize = alpha, beta, list_length, normalize

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        _check_pair(target, source, "DarkRank", minimum=self.list_length + 1)
        if self.normalize:
            target, source = F.normalize(target, dim=1), F.normalize(source.detach(), dim=1)
        with torch.no_grad():
            source_scores = -self.alpha * pairwise_distances(source.detach().to(target.dtype)).pow(self.beta)
            # the query itself (score 0, the highest) comes first: skip it
            ranked = source_scores.sort(dim=1, descending=True).indices[:, 1 : self.list_length + 1]
        scores = torch.gather(-self.alpha * pairwise_distances(target).pow(self.beta), 1, ranked)
        # log P(ranking) = Σ_m [s_m − logsumexp(s_m, …, s_L)]; the suffix logsumexp is a reversed cumulative one
        suffix = torch.logcumsumexp(scores.flip(1), dim=1).flip(1)
        return -(scores - suffix).sum(dim=1).mean()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, list_length={self.list_length}, normalize={self.normalize}"
