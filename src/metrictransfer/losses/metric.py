"""Metric losses on labels, taken from pytorch-metric-learning by name.

A registry (name → builder) instead of an if/elif chain: adding a loss is one entry. Builders get
``num_classes`` and ``embedding_dim`` because proxy-based losses own learnable proxies.
"""

from __future__ import annotations

from typing import Any, Callable

from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from torch import nn

from metrictransfer.errors import ConfigError
from metrictransfer.losses.params import check_params

MetricLossBuilder = Callable[..., nn.Module]


def _proxy_anchor(num_classes: int, embedding_dim: int, margin: float = 0.1, alpha: float = 32.0) -> nn.Module:
    return pml_losses.ProxyAnchorLoss(num_classes, embedding_dim, margin=margin, alpha=alpha)


def _triplet(num_classes: int, embedding_dim: int, margin: float = 0.2) -> nn.Module:
    return pml_losses.TripletMarginLoss(margin=margin)


def _multi_similarity(
    num_classes: int, embedding_dim: int, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5
) -> nn.Module:
    return pml_losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)


def _contrastive(num_classes: int, embedding_dim: int, pos_margin: float = 0.0, neg_margin: float = 0.5) -> nn.Module:
    return pml_losses.ContrastiveLoss(pos_margin=pos_margin, neg_margin=neg_margin)


METRIC_LOSSES: dict[str, MetricLossBuilder] = {
    "proxy_anchor": _proxy_anchor,
    "triplet": _triplet,
    "multi_similarity": _multi_similarity,
    "contrastive": _contrastive,
}

MINERS: dict[str, Callable[..., Any]] = {
    "none": lambda: None,
    "distance_weighted": lambda cutoff=0.5, nonzero_loss_cutoff=1.4: pml_miners.DistanceWeightedMiner(
        cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff
    ),
    "multi_similarity": lambda epsilon=0.1: pml_miners.MultiSimilarityMiner(epsilon=epsilon),
}


def _unknown(kind: str, name: str, registry: dict) -> ConfigError:
    return ConfigError(f"unknown {kind} {name!r}; valid names: {', '.join(sorted(registry))}")


def build_metric_loss(name: str, num_classes: int, embedding_dim: int, **params: Any) -> nn.Module:
    """Build a pytorch-metric-learning loss by registry name; ``params`` are its keyword arguments."""
    if name not in METRIC_LOSSES:
        raise _unknown("metric loss", name, METRIC_LOSSES)
    check_metric_loss_params(name, params)
    return METRIC_LOSSES[name](num_classes, embedding_dim, **params)


def check_metric_loss_params(name: str, params: dict[str, Any], where: str = "metric_loss.params") -> None:
    check_params(METRIC_LOSSES[name], params, f"metric loss {name!r}", where, filled=("num_classes", "embedding_dim"))


def build_miner(name: str, **params: Any) -> Any:
    """Build a pytorch-metric-learning miner by registry name (``"none"`` gives no miner)."""
    if name not in MINERS:
        raise _unknown("miner", name, MINERS)
    check_miner_params(name, params)
    return MINERS[name](**params)


def check_miner_params(name: str, params: dict[str, Any], where: str = "metric_loss.miner_params") -> None:
    check_params(MINERS[name], params, f"miner {name!r}", where)


class MinedMetricLoss(nn.Module):
    """A metric loss with an optional miner, called as ``loss(embeddings, labels)``."""

    def __init__(self, loss: nn.Module, miner: Any = None) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner

    def forward(self, embeddings, labels):
        pairs = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, pairs)
