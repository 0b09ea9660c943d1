"""What every method with a teacher shares: transfer losses built and set up from the two models, hint
taps on both, and the teacher's inputs gathered into one :class:`TransferInputs` per step.

Transfer (a frozen source teaches the target), mutual learning (each peer teaches each learner) and
classifier distillation all go through here, so a loss that needs something new (feature maps, image
indices, logits) is handled in one place.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

from metrictransfer.errors import ConfigError
from metrictransfer.losses import TransferInputs, TransferLoss, TransferShapes, build_transfer_loss
from metrictransfer.models.features import FeatureTaps, feature_shapes


class HintTaps:
    """Forward hooks on a learner's and a teacher's paired layers (for losses that need feature maps)."""

    def __init__(
        self, learner: nn.Module, teacher: nn.Module, learner_layers: Sequence[str], teacher_layers: Sequence[str], image_size: int
    ) -> None:
        if len(learner_layers) != len(teacher_layers):
            raise ConfigError(f"hint layers must pair up: {len(learner_layers)} target layers but {len(teacher_layers)} source layers")
        self.learner_channels = [shape[0] for shape in feature_shapes(learner, list(learner_layers), image_size)]
        self.teacher_channels = [shape[0] for shape in feature_shapes(teacher, list(teacher_layers), image_size)]
        self.learner = FeatureTaps(learner, list(learner_layers))
        self.teacher = FeatureTaps(teacher, list(teacher_layers))


@contextmanager
def capturing(taps: Sequence[FeatureTaps]) -> Iterator[None]:
    """Keep the feature maps of every forward pass inside the block (one training step), then let them go."""
    with ExitStack() as stack:
        for tap in taps:
            stack.enter_context(tap.capture())
        yield


def needs_of(losses: Sequence[TransferLoss]) -> set[str]:
    return set().union(*(loss.needs for loss in losses)) if losses else set()


def build_losses(specs: Sequence[tuple[str, dict[str, Any]]], where: str, provides: set[str]) -> list[TransferLoss]:
    """Transfer losses from (name, params), refused here, when the method is built, if they need an input
    (``TransferLoss.needs``) the method cannot provide (``provides``)."""
    losses = [build_transfer_loss(name, params, where) for name, params in specs]
    for (name, _), loss in zip(specs, losses):
        missing = loss.needs - provides
        if missing:
            raise ConfigError(
                f"transfer loss {name!r} needs {', '.join(sorted(missing))}, which {where.split('.')[0]} "
                f"cannot provide here" + _NEEDS_HINT.get(min(missing), "")
            )
    return losses


_NEEDS_HINT = {
    "features": " (feature maps need a source model: use transfer.source_checkpoint, not source_embeddings)",
    "logits": " (class logits: only method classifier has them, as classifier.distill)",
}


def setup_losses(losses: Sequence[TransferLoss], learner_dim: int, teacher_dim: int, hints: HintTaps | None) -> None:
    shapes = TransferShapes(learner_dim, teacher_dim, hints.learner_channels if hints else None, hints.teacher_channels if hints else None)
    for loss in losses:
        loss.setup(shapes)


def setup_items(losses: Sequence[TransferLoss], num_items: int) -> None:
    for loss in losses:
        loss.setup_items(num_items)


ModuleT = TypeVar("ModuleT", bound=nn.Module)


def frozen(model: ModuleT) -> ModuleT:
    """A teacher that never learns: no gradient, in no optimiser, and in eval mode (the method's ``train``
    keeps it there, see :meth:`Method.freeze`), so neither its weights nor its batch-norm statistics move."""
    model.requires_grad_(False)
    return model.eval()


def teacher_inputs(
    target: torch.Tensor,
    source: torch.Tensor,
    hints: HintTaps | None = None,
    detach_teacher_features: bool = False,
    **extra: torch.Tensor | None,
) -> TransferInputs:
    """One step's :class:`TransferInputs`; feature maps come from ``hints`` (read inside :func:`capturing`)."""
    target_features = source_features = None
    if hints is not None:
        target_features = hints.learner.features
        source_features = hints.teacher.features
        if detach_teacher_features:
            source_features = [f.detach() for f in source_features]
    return TransferInputs(target, source, target_features, source_features, **extra)
