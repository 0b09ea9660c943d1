"""Losses: transfer losses ``loss(target, source)`` and metric losses ``loss(embeddings, labels)``."""

from metrictransfer.errors import ConfigError
from metrictransfer.losses.crd import CRDLoss
from metrictransfer.losses.distances import pairwise_distances
from metrictransfer.losses.hints import AttentionLoss, FitNetLoss
from metrictransfer.losses.metric import METRIC_LOSSES, MINERS, MinedMetricLoss, build_metric_loss, build_miner
from metrictransfer.losses.params import check_params
from metrictransfer.losses.relational import DarkRankLoss, PKTLoss, RKDAngleLoss, RKDDistanceLoss, RKDLoss
from metrictransfer.losses.relaxed_contrastive import RelaxedContrastiveLoss

# Transfer losses by the name recipes use: each builds ``loss(target, source)`` from keyword parameters.
TRANSFER_LOSSES = {
    "relaxed_contrastive": RelaxedContrastiveLoss,
    "rkd": RKDLoss,
    "rkd_distance": RKDDistanceLoss,
    "rkd_angle": RKDAngleLoss,
    "pkt": PKTLoss,
    "darkrank": DarkRankLoss,
    "fitnet": FitNetLoss,
    "attention": AttentionLoss,
    "crd": CRDLoss,
}



def build_transfer_loss(name: str, params: dict | None = None, where: str = "transfer.params"):
    """A transfer loss by registry name with its keyword parameters, checked against its signature
    (``where``: the configuration key they came from, for the error message)."""
    if name not in TRANSFER_LOSSES:
        raise ConfigError(f"unknown transfer loss {name!r}; valid names: {', '.join(sorted(TRANSFER_LOSSES))}")
    check_params(TRANSFER_LOSSES[name], params or {}, f"transfer loss {name!r}", where)
    return TRANSFER_LOSSES[name](**(params or {}))


__all__ = [
    "AttentionLoss",
    "CRDLoss",
    "FitNetLoss",
    "DarkRankLoss",
    "PKTLoss",
    "RKDAngleLoss",
    "RKDDistanceLoss",
    "RKDLoss",
    "METRIC_LOSSES",
    "MINERS",
    "TRANSFER_LOSSES",
    "MinedMetricLoss",
    "RelaxedContrastiveLoss",
    "build_metric_loss",
    "build_transfer_loss",
    "build_miner",
    "pairwise_distances",
]
