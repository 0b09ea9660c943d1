"""The contract every transfer loss follows: built from keyword parameters, set up once with the two
models' shapes, then given one :class:`TransferInputs` per step.

Methods (transfer, mutual, classifier) call :meth:`TransferLoss.compute` and never ask a loss what it
reads: the loss picks its inputs from the object. A new loss subclasses :class:`TransferLoss`, implements
``forward`` on the tensors it needs, overrides ``compute`` only when those are not the two embeddings,
declares them in ``needs`` (so a method can refuse a run that cannot provide them, when it is built) and is
registered with ``@register_transfer_loss("name")`` where it is defined.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, cast

import torch
from torch import nn

#: What a loss may need besides the two embeddings.
NEEDS = frozenset({"features", "indices", "labels", "logits"})


@dataclass
class TransferInputs:
    """One step's inputs of a transfer loss, over the global batch (feature maps: this process's batch).

    ``target`` carries gradient; ``source`` and ``source_*`` are the teacher's (a frozen source model, a
    precomputed table, or a peer of a cohort) and are constants to the loss.
    """

    target: torch.Tensor
    source: torch.Tensor
    target_features: list[torch.Tensor] | None = None
    source_features: list[torch.Tensor] | None = None
    indices: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    target_logits: torch.Tensor | None = None
    source_logits: torch.Tensor | None = None


@dataclass
class TransferShapes:
    """What a loss with learnable parts (projectors, regressors, memory banks) is sized from."""

    target_dim: int
    source_dim: int
    target_channels: list[int] | None = None  # of the tapped feature maps, when the loss needs features
    source_channels: list[int] | None = None


class TransferLoss(nn.Module):
    """Base of every transfer loss: ``forward`` computes it on tensors, ``compute`` picks them from the inputs."""

    needs: ClassVar[frozenset[str]] = frozenset()

    def setup(self, shapes: TransferShapes) -> None:
        """Build parts whose sizes depend on the two models (called once, before the optimiser exists)."""

    def setup_items(self, num_items: int) -> None:
        """Build per-image state for a training set of ``num_items`` images (indexed by ``inputs.indices``)."""

    def compute(self, inputs: TransferInputs) -> torch.Tensor:
        """The loss of one step; by default ``forward(target, source)`` on the embeddings."""
        check_pair(inputs.target, inputs.source, type(self).__name__)
        return cast(torch.Tensor, self(inputs.target, inputs.source))


def check_pair(target: torch.Tensor, source: torch.Tensor, name: str, minimum: int = 2) -> None:
    """Embeddings of the same images: both N × D (D may differ) with N ≥ ``minimum``."""
    if target.dim() != 2 or source.dim() != 2 or len(target) != len(source):
        raise ValueError(
            f"{name}: expected target (N × D_t) and source (N × D_s) embeddings of the same N images, "
            f"got shapes {tuple(target.shape)} and {tuple(source.shape)}"
        )
    if len(target) < minimum:
        raise ValueError(f"{name}: needs at least {minimum} embeddings, got {len(target)}")
