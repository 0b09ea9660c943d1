"""Hint-based transfer baselines on intermediate feature maps: FitNet and Attention transfer.

Both are ``loss(target_features, source_features)`` over lists of feature maps (N × C × H × W), one per
tapped layer; the methods take them with forward hooks (``models.features``) because ``needs`` says so.
Where the two models' maps differ in size, the target's is resized to the source's.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from metrictransfer.losses.base import TransferInputs, TransferLoss, TransferShapes
from metrictransfer.registry import register_transfer_loss


def _match(target: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return target if target.shape[-2:] == size else F.interpolate(target, size=size, mode="bilinear", align_corners=False)


def _check_lists(target: list[torch.Tensor], source: list[torch.Tensor], name: str) -> None:
    if len(target) != len(source) or not target:
        raise ValueError(f"{name}: expected as many target as source feature maps (at least one), got {len(target)} and {len(source)}")


@register_transfer_loss("fitnet")
class FitNetLoss(TransferLoss):
    """FitNet hints: a 1 × 1-convolution regressor per layer maps the target's channels to the source's;
    the loss is the mean squared error to the source's feature map, summed over layers.

    The regressors' sizes depend on the two models, so they are built by :meth:`setup` (the methods call it
    with the tapped channels before creating the optimiser, which then trains them).
    """

    needs = frozenset({"features"})

    def __init__(self) -> None:
        super().__init__()
        self.regressors = nn.ModuleList()

    def setup(self, shapes: TransferShapes) -> None:
        pairs = zip(shapes.target_channels or [], shapes.source_channels or [])
        self.regressors = nn.ModuleList(nn.Conv2d(t, s, kernel_size=1, bias=False) for t, s in pairs)

    def compute(self, inputs: TransferInputs) -> torch.Tensor:
        return cast(torch.Tensor, self(inputs.target_features, inputs.source_features))

    def forward(self, target: list[torch.Tensor], source: list[torch.Tensor]) -> torch.Tensor:
        _check_lists(target, source, "FitNet")
        if len(self.regressors) != len(target):
            raise RuntimeError("FitNetLoss.setup(TransferShapes(..., target_channels, source_channels)) must be called before use")
        total = target[0].new_zeros(())
        for regressor, t, s in zip(self.regressors, target, source):
            # float32: feature maps come in the run's precision (bf16 / fp16 under autocast)
            total = total + F.mse_loss(_match(regressor(t.float()), s.shape[-2:]), s.detach().float())
        return total


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention: the channel mean of |f|^p, flattened and L2-normalised per image."""
    return F.normalize(features.abs().pow(p).mean(dim=1).flatten(1), dim=1)


@register_transfer_loss("attention")
class AttentionLoss(TransferLoss):
    """Attention transfer: mean squared difference of the two models' attention maps, summed over layers."""

    needs = frozenset({"features"})

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        self.p = p

    def compute(self, inputs: TransferInputs) -> torch.Tensor:
        return cast(torch.Tensor, self(inputs.target_features, inputs.source_features))

    def forward(self, target: list[torch.Tensor], source: list[torch.Tensor]) -> torch.Tensor:
        _check_lists(target, source, "Attention")
        total = target[0].new_zeros(())
        for t, s in zip(target, source):
            t, s = t.float(), s.detach().float()  # feature maps come in the run's precision
            total = total + (attention_map(_match(t, s.shape[-2:]), self.p) - attention_map(s, self.p)).pow(2).mean()
        return total

    def extra_repr(self) -> str:
        return f"p={self.p}"
