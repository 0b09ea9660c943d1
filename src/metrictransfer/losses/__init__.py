"""Losses: transfer losses ``loss(target, source)`` and metric losses ``loss(embeddings, labels)``."""

from metrictransfer.losses.distances import pairwise_distances
from metrictransfer.losses.metric import METRIC_LOSSES, MINERS, MinedMetricLoss, build_metric_loss, build_miner
from metrictransfer.losses.relaxed_contrastive import RelaxedContrastiveLoss

TRANSFER_LOSSES = {"relaxed_contrastive": RelaxedContrastiveLoss}

__all__ = [
    "METRIC_LOSSES",
    "MINERS",
    "TRANSFER_LOSSES",
    "MinedMetricLoss",
    "RelaxedContrastiveLoss",
    "build_metric_loss",
    "build_miner",
    "pairwise_distances",
]
