"""Train and test transforms by name (torchvision.transforms.v2)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from metrictransfer.errors import ConfigError
from metrictransfer.normalization import BN_INCEPTION_MEAN_BGR, NORMALIZATION_STATS, NORMALIZATIONS
from metrictransfer.registry import TRANSFORMS, register_transform


def _bgr_0_255(image: torch.Tensor) -> torch.Tensor:
    return image.flip(-3) * 255.0


def _to_tensor(normalization: str = "imagenet") -> list[Any]:
    """PIL image → normalised float tensor, by the convention the backbone's weights were trained with."""
    # Normalize in place: it always follows ToDtype (or the BGR step), whose float tensor is new and its own;
    # the same numbers with one pass over the batch fewer (benchmarks/results/evaluation_views.md)
    steps = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if normalization == "bn_inception":
        return steps + [v2.Lambda(_bgr_0_255), v2.Normalize(BN_INCEPTION_MEAN_BGR, (1.0, 1.0, 1.0), inplace=True)]
    return steps + [v2.Normalize(*NORMALIZATION_STATS[normalization], inplace=True)]


def split_per_batch(transform: Any) -> tuple[v2.Compose, v2.Transform] | None:
    """(per-image part, per-batch part) of a pipeline that turns its image into a tensor (``ToImage``) and
    after that only converts and normalises it, elementwise; None for any other pipeline.

    :class:`~metrictransfer.data.multiview.MultiViewDataset` runs the second part once on a whole batch of
    same-size images, with the very same numbers: run per 32-px view it cost about a third of the glyphs
    augmentation's time (benchmarks/demo_profile.py)."""
    steps = transform.transforms if isinstance(transform, v2.Compose) else None
    if not steps:
        return None
    for i, step in enumerate(steps):
        if isinstance(step, v2.ToImage):
            tail = steps[i + 1 :]
            elementwise = all(
                isinstance(t, (v2.ToDtype, v2.Normalize)) or (isinstance(t, v2.Lambda) and t.lambd is _bgr_0_255) for t in tail
            )
            return (v2.Compose(steps[: i + 1]), v2.Compose(tail) if tail else v2.Identity()) if elementwise else None
    return None


def _crop_scale(smallest: float, strength: float) -> tuple[float, float]:
    """RandomResizedCrop's area range, widened or narrowed around full size by ``strength`` (1: as given)."""
    return max(0.02, 1.0 - strength * (1.0 - smallest)), 1.0


def _paper_train(size: int, normalization: str, strength: float = 1.0) -> v2.Compose:
    # The papers' augmentation: RandomResizedCrop + horizontal flip.
    return v2.Compose(
        [v2.RGB(), v2.RandomResizedCrop(size, scale=_crop_scale(0.08, strength)), v2.RandomHorizontalFlip(), *_to_tensor(normalization)]
    )


def _paper_test(size: int, normalization: str) -> v2.Compose:
    # Resize(256) + CenterCrop(224) at the paper's size, the same ratio at other sizes.
    return v2.Compose([v2.RGB(), v2.Resize(round(size * 256 / 224)), v2.CenterCrop(size), *_to_tensor(normalization)])


def _glyphs_train(size: int, normalization: str, strength: float = 1.0) -> v2.Compose:
    # No flip: a mirrored character is often another character (b/d, p/q, Я/R).
    return v2.Compose(
        [
            v2.RGB(),
            v2.RandomResizedCrop(size, scale=_crop_scale(0.6, strength), ratio=(0.8, 1.25)),
            v2.RandomRotation(10 * strength),
            *_to_tensor(normalization),
        ]
    )


def _glyphs_test(size: int, normalization: str) -> v2.Compose:
    return v2.Compose([v2.RGB(), v2.Resize((size, size)), *_to_tensor(normalization)])


# (train, test) builders by the name recipes use in data.transform
register_transform("paper")((_paper_train, _paper_test))
register_transform("glyphs")((_glyphs_train, _glyphs_test))


def build_transform(name: str, train: bool, image_size: int, normalization: str = "imagenet", strength: float = 1.0) -> v2.Compose:
    """The named augmentation pipeline: ``train=True`` gives the random one, else the deterministic one.

    ``strength`` scales the random one (cohort members' view diversity): the crop's smallest area moves
    towards full size below 1 and away from it above 1, rotations scale with it; 0 is crop-free."""
    train_builder, test_builder = TRANSFORMS.get(name, "data.transform")
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
    if strength < 0:
        raise ValueError(f"augmentation strength must be >= 0, got {strength}")
    if not train:
        return test_builder(image_size, normalization)
    return train_builder(image_size, normalization, strength)


def feed_each(pixels: torch.Tensor, feeds: tuple[tuple[int, str], ...]) -> tuple[torch.Tensor, ...]:
    """The same plain-RGB views as each model takes them, one ``(size, normalization)`` per model."""
    return tuple(to_model_input(pixels, size, normalization) for size, normalization in feeds)


def to_model_input(pixels: torch.Tensor, size: int, normalization: str) -> torch.Tensor:
    """Views in plain RGB, [0, 1] (``normalization: none``), as one model takes them: resized to ``size`` ×
    ``size`` (bilinear, antialiased, as ``v2.Resize`` does on tensors) and normalised by its convention.

    Two models with different input sizes or normalisations (a transfer from a foundation model) are fed the
    very same augmented view this way, each its own way, instead of two different random crops."""
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
    if pixels.shape[-2:] != (size, size):
        pixels = F.interpolate(pixels.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    if normalization == "bn_inception":
        pixels = _bgr_0_255(pixels)
        mean, std = BN_INCEPTION_MEAN_BGR, (1.0, 1.0, 1.0)
    else:
        mean, std = NORMALIZATION_STATS[normalization]
    shape = (1, 3, 1, 1)
    return (pixels - pixels.new_tensor(mean).view(shape)) / pixels.new_tensor(std).view(shape)
