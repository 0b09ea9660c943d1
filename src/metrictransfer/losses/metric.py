"""Metric losses on labels and miners, taken from pytorch-metric-learning (PML).

Every PML loss and miner is registered under its class name (``ProxyAnchorLoss``, ``ArcFaceLoss``,
``BatchHardMiner``, ...) with PML's own defaults; ``num_classes`` and ``embedding_size`` are filled in when a
class's signature asks for them (proxy and classification losses own learnable weights). The short names
below are the recipes' long-standing aliases: each is a PML class with the defaults our recipes were tuned
with, stated here once (where they differ from PML's: triplet margin 0.2, contrastive negative margin 0.5).
"""

from __future__ import annotations

import inspect
from typing import Any, cast

import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from torch import nn

from metrictransfer.errors import ConfigError
from metrictransfer.params import check_params
from metrictransfer.registry import METRIC_LOSSES, MINERS, register_metric_loss, register_miner

#: Parameters metrictransfer fills from the data and the model, never from a recipe.
FILLED = ("num_classes", "embedding_size")


def _buildable(cls: type) -> bool:
    """A class a recipe can build: every parameter without a default is one that metrictransfer fills
    (wrappers such as CrossBatchMemory, which take another loss object, cannot come from YAML)."""
    required = [
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    return not _is_base(cls) and all(name in FILLED for name in required)


def _is_base(cls: type) -> bool:
    return cls.__name__.startswith("Base") or cls.__name__ == "EmbeddingsAlreadyPackagedAsTriplets"


for _name, _cls in vars(pml_losses).items():
    if inspect.isclass(_cls) and issubclass(_cls, pml_losses.BaseMetricLossFunction) and _buildable(_cls):
        register_metric_loss(_name)(_cls)
for _name, _cls in vars(pml_miners).items():
    if inspect.isclass(_cls) and issubclass(_cls, pml_miners.BaseMiner) and _buildable(_cls):
        register_miner(_name)(_cls)

register_metric_loss("proxy_anchor", defaults={"margin": 0.1, "alpha": 32.0})(pml_losses.ProxyAnchorLoss)
register_metric_loss("triplet", defaults={"margin": 0.2})(pml_losses.TripletMarginLoss)
register_metric_loss("multi_similarity", defaults={"alpha": 2.0, "beta": 50.0, "base": 0.5})(pml_losses.MultiSimilarityLoss)
register_metric_loss("contrastive", defaults={"pos_margin": 0.0, "neg_margin": 0.5})(pml_losses.ContrastiveLoss)
register_miner("distance_weighted", defaults={"cutoff": 0.5, "nonzero_loss_cutoff": 1.4})(pml_miners.DistanceWeightedMiner)
register_miner("multi_similarity", defaults={"epsilon": 0.1})(pml_miners.MultiSimilarityMiner)


@register_miner("none")
def no_miner() -> None:
    """No mining: the loss sees every pair or triplet of the batch."""
    return None


def build_metric_loss(name: str, num_classes: int, embedding_dim: int, **params: Any) -> nn.Module:
    """A metric loss by registry name; ``params`` are its keyword arguments (over the alias's defaults)."""
    entry = METRIC_LOSSES.entry(name, "metric_loss.name")
    check_metric_loss_params(name, params)
    accepted = inspect.signature(entry.component).parameters
    filled = {"num_classes": num_classes, "embedding_size": embedding_dim}
    loss: nn.Module = entry.component(**{k: v for k, v in filled.items() if k in accepted}, **{**entry.info.get("defaults", {}), **params})
    return loss


def check_metric_loss_params(name: str, params: dict[str, Any], where: str = "metric_loss.params") -> None:
    check_params(METRIC_LOSSES.get(name, "metric_loss.name"), params, f"metric loss {name!r}", where, filled=FILLED)


def build_miner(name: str, **params: Any) -> Any:
    """A miner by registry name (``"none"`` gives no miner)."""
    entry = MINERS.entry(name, "metric_loss.miner.name")
    check_miner_params(name, params)
    return entry.component(**{**entry.info.get("defaults", {}), **params})


def check_miner_params(name: str, params: dict[str, Any], where: str = "metric_loss.miner.params") -> None:
    check_params(MINERS.get(name, "metric_loss.miner.name"), params, f"miner {name!r}", where)


class MinedMetricLoss(nn.Module):
    """A metric loss with an optional miner, called as ``loss(embeddings, labels)``."""

    def __init__(self, loss: nn.Module, miner: Any = None) -> None:
        super().__init__()
        self.loss = loss
        self.miner = miner

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pairs = self.miner(embeddings, labels) if self.miner is not None else None
        return cast(torch.Tensor, self.loss(embeddings, labels, pairs))


__all__ = ["METRIC_LOSSES", "MINERS", "ConfigError", "MinedMetricLoss", "build_metric_loss", "build_miner"]
