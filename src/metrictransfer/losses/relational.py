"""Relational knowledge-transfer baselines of the embedding-transfer paper's Table 1: RKD, PKT, DarkRank.

Each is ``loss(target, source)``: ``target`` (N × D_t) carries the gradient, ``source`` (N × D_s) is a
constant. The formulas follow the original authors' published definitions (RKD: Park et al., CVPR 2019;
PKT: Passalis & Tefas, ECCV 2018; DarkRank: Chen et al., AAAI 2018, hard variant), including their
normalisations and reductions, so that the values match the reference file to float64 precision.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F

from metrictransfer.losses.base import TransferLoss, check_pair
from metrictransfer.losses.distances import pairwise_distances
from metrictransfer.registry import register_transfer_loss


def _mean_normalised_distances(x: torch.Tensor) -> torch.Tensor:
    d = pairwise_distances(x)
    return d / d[d > 0].mean()


@register_transfer_loss("rkd_distance")
class RKDDistanceLoss(TransferLoss):
    """RKD distance term: Smooth-L1 between the two models' distance matrices, each divided by its mean
    off-diagonal distance (so the target's scale is free). Mean over all N² entries."""

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        check_pair(target, source, "RKD distance")
        with torch.no_grad():
            source_d = _mean_normalised_distances(source.detach())
        return F.smooth_l1_loss(_mean_normalised_distances(target), source_d.to(target.dtype))


def _angle_cosines(anchors: torch.Tensor, gram: torch.Tensor, inv_dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cos ∠(x_j − x_i, x_k − x_i) for anchors i (A × N × N), from Gram products: no A × N × D tensor.

    <x_j − x_i, x_k − x_i> = G_jk − G_ij − G_ik + G_ii, divided by ||x_j − x_i|| · ||x_k − x_i||. ``inv_dist``
    holds 1 / ||x_j − x_i|| and 0 where the difference is zero (j = i), so such a cosine is 0, as normalising a
    zero vector gives in the original formula. Returns the cosines, the inner products and the
    products of inverse distances (the backward pass needs the last two).
    """
    g_anchor = gram[anchors]  # A × N: G_ij
    inner = gram.unsqueeze(0) - g_anchor.unsqueeze(2) - g_anchor.unsqueeze(1)
    inner += gram[anchors, anchors].view(-1, 1, 1)  # G_ii
    r = inv_dist[anchors]
    scale = r.unsqueeze(2) * r.unsqueeze(1)
    return inner * scale, inner, scale


def _inverse_distances(x: torch.Tensor) -> torch.Tensor:
    d = pairwise_distances(x)
    return torch.where(d > 0, 1.0 / d.clamp(min=1e-30), torch.zeros_like(d))


class _AngleLoss(torch.autograd.Function):
    """Sum over all triples of Smooth-L1(target cosine − source cosine), with its gradient.

    The loss is a scalar, so its gradient with respect to the target's Gram matrix and inverse distances
    (both N × N) is accumulated chunk by chunk in the same pass that computes the value: each A × N × N
    block is built once and freed, never stored for a backward pass nor recomputed in it. Why by hand:
    autograd would keep every block (O(N³) memory), and activation checkpointing builds each twice.
    """

    @staticmethod
    def forward(ctx: Any, t_gram: torch.Tensor, t_inv: torch.Tensor, s_gram: torch.Tensor, s_inv: torch.Tensor, chunk: int) -> torch.Tensor:
        n = len(t_gram)
        total = t_gram.new_zeros(())
        grad_gram, grad_inv = torch.zeros_like(t_gram), torch.zeros_like(t_inv)
        for start in range(0, n, chunk):
            a = torch.arange(start, min(start + chunk, n), device=t_gram.device)
            cos, inner, scale = _angle_cosines(a, t_gram, t_inv)
            source_cos = _angle_cosines(a, s_gram, s_inv)[0]
            diff = cos - source_cos
            total += F.smooth_l1_loss(cos, source_cos, reduction="sum")
            g = diff.clamp_(-1.0, 1.0)  # d Smooth-L1 / d cos (β = 1); symmetric in j and k, as the cosines are
            h = g * scale  # d loss / d inner
            grad_gram += h.sum(0)  # through G_jk
            grad_gram[a] -= 2.0 * h.sum(2)  # through G_ij and G_ik (equal by symmetry)
            grad_gram[a, a] += h.sum((1, 2))  # through G_ii
            # d loss / d (1/d_ij): Σ_k g · inner · (1/d_ik), once as the j factor and once as the k factor
            grad_inv[a] += 2.0 * torch.bmm(g.mul_(inner), t_inv[a].unsqueeze(2)).squeeze(2)
        ctx.save_for_backward(grad_gram, grad_inv)
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None, None]:
        grad_gram, grad_inv = ctx.saved_tensors
        return grad_output * grad_gram, grad_output * grad_inv, None, None, None


@register_transfer_loss("rkd_angle")
class RKDAngleLoss(TransferLoss):
    """RKD angle term: Smooth-L1 between the cosines of the angles every triple (i, j, k) makes at i,
    mean over all N³ triples.

    The naive form builds N × N × D difference vectors (512 MB at N = D = 512 in float32). Here the
    cosines come from the Gram matrix, ``chunk`` anchors at a time (memory O(chunk · N² + N · D)), and the
    gradient is accumulated in the same pass (:class:`_AngleLoss`), so each block is built only once.
    ``chunk=None`` sizes blocks to about 2¹⁸ cosines on CPU (they stay in cache: fastest in
    benchmarks/rkd_angle.py) and 2²⁴ on GPU.
    """

    def __init__(self, chunk: int | None = None) -> None:
        super().__init__()
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be >= 1 or None (automatic), got {chunk}")
        self.chunk = chunk

    def anchors_per_chunk(self, n: int, device: torch.device) -> int:
        if self.chunk is not None:
            return self.chunk
        budget = 2**18 if device.type == "cpu" else 2**24
        return max(1, budget // (n * n))

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        check_pair(target, source, "RKD angle", minimum=3)
        n = len(target)
        target = target.float() if target.dtype in (torch.float16, torch.bfloat16) else target
        with torch.no_grad():
            s = source.detach().to(target.dtype)
            s_gram, s_inv = s @ s.t(), _inverse_distances(s)
        t_gram, t_inv = target @ target.t(), _inverse_distances(target)
        chunk = self.anchors_per_chunk(n, target.device)
        return cast(torch.Tensor, _AngleLoss.apply(t_gram, t_inv, s_gram, s_inv, chunk)) / n**3

    def extra_repr(self) -> str:
        return f"chunk={self.chunk}"


@register_transfer_loss("rkd")
class RKDLoss(TransferLoss):
    """The RKD method: distance term × ``distance_weight`` (1) + angle term × ``angle_weight`` (2)."""

    def __init__(self, distance_weight: float = 1.0, angle_weight: float = 2.0, chunk: int | None = None) -> None:
        super().__init__()
        self.distance_weight, self.angle_weight = distance_weight, angle_weight
        self.distance, self.angle = RKDDistanceLoss(), RKDAngleLoss(chunk)

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        distance: torch.Tensor = self.distance(target, source)
        angle: torch.Tensor = self.angle(target, source)
        return self.distance_weight * distance + self.angle_weight * angle


def _pkt_affinity(x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x / (x.norm(dim=1, keepdim=True) + eps)
    similarity = (x @ x.t() + 1.0) / 2.0  # cosine similarity mapped to [0, 1]
    return similarity / similarity.sum(dim=1, keepdim=True)


@register_transfer_loss("pkt")
class PKTLoss(TransferLoss):
    """Probabilistic knowledge transfer: row-normalised cosine affinities of the two models, compared by
    KL divergence (source ‖ target), averaged over all N² entries."""

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        check_pair(target, source, "PKT")
        with torch.no_grad():
            p = _pkt_affinity(source.detach().to(target.dtype), self.eps)
        q = _pkt_affinity(target, self.eps)
        return torch.mean(p * torch.log((p + self.eps) / (q + self.eps)))


@register_transfer_loss("darkrank")
class DarkRankLoss(TransferLoss):
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
        check_pair(target, source, "DarkRank", minimum=self.list_length + 1)
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
