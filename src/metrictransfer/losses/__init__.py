"""Losses: transfer losses (:class:`TransferLoss`, ``@register_transfer_loss``) and metric losses on labels
(pytorch-metric-learning's, by class name or alias). Each registers itself where it is defined; the
registries in :mod:`metrictransfer.registry` find every module of this package."""

from typing import Any, cast

from metrictransfer.losses.base import TransferInputs, TransferLoss, TransferShapes
from metrictransfer.losses.crd import CRDLoss
from metrictransfer.losses.distances import pairwise_distances
from metrictransfer.losses.hints import AttentionLoss, FitNetLoss
from metrictransfer.losses.logits import HintonLoss
from metrictransfer.losses.metric import MinedMetricLoss, build_metric_loss, build_miner
from metrictransfer.losses.relational import DarkRankLoss, PKTLoss, RKDAngleLoss, RKDDistanceLoss, RKDLoss
from metrictransfer.losses.relaxed_contrastive import RelaxedContrastiveLoss, RelaxedMultiSimilarityLoss
from metrictransfer.params import check_params
from metrictransfer.registry import METRIC_LOSSES, MINERS, TRANSFER_LOSSES, register_transfer_loss


def build_transfer_loss(name: str, params: dict[str, Any] | None = None, where: str = "transfer.loss.params") -> TransferLoss:
    """A transfer loss by registry name with its keyword parameters, checked against its signature
    (``where``: the configuration key they came from, for the error message)."""
    cls = TRANSFER_LOSSES.get(name, where.rsplit(".", 1)[0] + ".name")
    check_params(cls, params or {}, f"transfer loss {name!r}", where)
    return cast(TransferLoss, cls(**(params or {})))


__all__ = [
    "AttentionLoss",
    "CRDLoss",
    "DarkRankLoss",
    "FitNetLoss",
    "HintonLoss",
    "METRIC_LOSSES",
    "MINERS",
    "MinedMetricLoss",
    "PKTLoss",
    "RKDAngleLoss",
    "RKDDistanceLoss",
    "RKDLoss",
    "RelaxedContrastiveLoss",
    "RelaxedMultiSimilarityLoss",
    "TRANSFER_LOSSES",
    "TransferInputs",
    "TransferLoss",
    "TransferShapes",
    "build_metric_loss",
    "build_miner",
    "build_transfer_loss",
    "pairwise_distances",
    "register_transfer_loss",
]
