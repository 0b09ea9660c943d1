"""Feature-regression baselines for distilling a large pretrained model's features into a small target.

The target's embedding (N × D_t) is mapped to the source's size by a learned linear projector
(``nn.Linear(D_t, D_s)``, built by :meth:`~ProjectedRegressionLoss.setup`) and regressed onto the source's
embedding (N × D_s) of the same image, row by row:

- ``proj_cosine``: mean over rows of 1 − cos(P t_i, s_i);
- ``proj_mse``: mean squared error between P t and s over all N × D_s entries, by default after
  L2-normalising each row of both.

The projector is a parameter of the loss, so the methods train it with the target (as FitNet's regressors)
and checkpoint it. Both losses are pointwise: a batch of one image is enough.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from metrictransfer.losses.base import TransferInputs, TransferLoss, TransferShapes, check_pair
from metrictransfer.registry import register_transfer_loss


class ProjectedRegressionLoss(TransferLoss):
    """Base of the projector losses: builds the projector and hands ``forward`` the projected target and
    the (detached) source, both in the projector's precision, float32 unless the loss was converted."""

    def __init__(self) -> None:
        super().__init__()
        self.projector: nn.Linear | None = None

    def setup(self, shapes: TransferShapes) -> None:
        self.projector = nn.Linear(shapes.target_dim, shapes.source_dim)

    def compute(self, inputs: TransferInputs) -> torch.Tensor:
        # not the base's check: one row is enough for a pointwise loss (forward checks the pair)
        return cast(torch.Tensor, self(inputs.target, inputs.source))

    def project(self, target: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The projected target (with gradient) and the source as a constant, after checking the shapes."""
        name = type(self).__name__
        check_pair(target, source, name, minimum=1)
        if self.projector is None:
            raise RuntimeError(f"{name}.setup(TransferShapes(target_dim, source_dim)) must be called before use")
        if target.shape[1] != self.projector.in_features or source.shape[1] != self.projector.out_features:
            raise ValueError(
                f"{name}: set up for target × source dimensions {self.projector.in_features} × {self.projector.out_features}, "
                f"got {target.shape[1]} × {source.shape[1]}"
            )
        dtype = self.projector.weight.dtype  # bf16 / fp16 inputs are computed in float32
        return self.projector(target.to(dtype)), source.detach().to(dtype)


@register_transfer_loss("proj_cosine")
class ProjectedCosineLoss(ProjectedRegressionLoss):
    """Mean over the batch of 1 − cosine similarity between the projected target and the source.

    Insensitive to the scale of either embedding, so raw features of a pretrained model can be used as they
    come. Ranges over [0, 2].
    """

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        projected, source = self.project(target, source)
        return (1.0 - F.cosine_similarity(projected, source, dim=1)).mean()


@register_transfer_loss("proj_mse")
class ProjectedMSELoss(ProjectedRegressionLoss):
    """Mean squared error between the projected target and the source, averaged over all N × D_s entries.

    ``normalize`` (default true) L2-normalises each row of both first. Raw features of a foundation model
    have an arbitrary scale (norms of tens or hundreds, different from model to model), which would set the
    size of this loss and of its gradients; normalised, the loss equals 2 · (1 − cos) / D_s per image, that is
    ``proj_cosine`` × 2 / D_s. With ``normalize: false`` the projector must also learn the source's scale.
    """

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize

    def forward(self, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        projected, source = self.project(target, source)
        if self.normalize:
            projected, source = F.normalize(projected, dim=1), F.normalize(source, dim=1)
        return F.mse_loss(projected, source)

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"
