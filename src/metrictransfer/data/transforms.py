"""Train and test transforms by name (torchvision.transforms.v2); the test ones are built from their
:class:`~metrictransfer.data.preprocessing.Preprocessing`, and the training ones end in its pixel format."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from metrictransfer.data.preprocessing import Preprocessing
from metrictransfer.errors import ConfigError
from metrictransfer.normalization import BN_INCEPTION_MEAN_BGR, NORMALIZATION_STATS, NORMALIZATIONS

# The conventions' numbers too: tests read them from here
__all__ = [
    "BN_INCEPTION_MEAN_BGR",
    "NORMALIZATION_STATS",
    "build_transform",
    "feed_each",
    "split_per_batch",
    "to_model_input",
    "to_tensor",
    "to_torchvision",
]
from metrictransfer.registry import TRANSFORMS, register_transform


def _bgr_0_255(image: torch.Tensor) -> torch.Tensor:
    return image.flip(-3) * 255.0


def to_torchvision(preprocessing: Preprocessing) -> v2.Compose:
    """The test-time pipeline a :class:`Preprocessing` describes, for Pillow images as the datasets give them
    (decoded and turned upright by their EXIF tag already)."""
    steps: list[Any] = [v2.RGB()]
    interpolation = v2.InterpolationMode(preprocessing.interpolation)
    if preprocessing.resize is not None:
        steps.append(v2.Resize(preprocessing.resize, interpolation=interpolation))
    if preprocessing.crop is not None:
        steps.append(v2.CenterCrop(preprocessing.crop))
    return v2.Compose([*steps, *to_tensor(preprocessing)])


def to_tensor(preprocessing: Preprocessing) -> list[Any]:
    """Pillow image → float tensor in the pixel format of ``preprocessing`` (channel order, value range,
    mean and std): the steps the test pipeline and the training augmentations end with."""
    # Normalize in place: it always follows ToDtype (or the BGR step), whose float tensor is new and its own;
    # the same numbers with one pass over the batch fewer (benchmarks/results/evaluation_views.md)
    steps = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if preprocessing.channel_order == "BGR":  # BN-Inception's Caffe convention, always in 0-255 (Preprocessing checks)
        steps.append(v2.Lambda(_bgr_0_255))
    return [*steps, v2.Normalize(preprocessing.mean, preprocessing.std, inplace=True)]


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
    # The papers' augmentation: RandomResizedCrop + horizontal flip, to the test images' size and pixel format.
    test = _paper_test(size, normalization)
    return v2.Compose(
        [v2.RGB(), v2.RandomResizedCrop(test.size, scale=_crop_scale(0.08, strength)), v2.RandomHorizontalFlip(), *to_tensor(test)]
    )


def _paper_test(size: int, normalization: str) -> Preprocessing:
    # Resize(256) + CenterCrop(224) at the paper's size, the same ratio at other sizes.
    return Preprocessing.build(normalization, resize=round(size * 256 / 224), crop=(size, size))


def _glyphs_train(size: int, normalization: str, strength: float = 1.0) -> v2.Compose:
    # No flip: a mirrored character is often another character (b/d, p/q, Я/R).
    test = _glyphs_test(size, normalization)
    return v2.Compose(
        [
            v2.RGB(),
            v2.RandomResizedCrop(test.size, scale=_crop_scale(0.6, strength), ratio=(0.8, 1.25)),
            v2.RandomRotation(10 * strength),
            *to_tensor(test),
        ]
    )


def _glyphs_test(size: int, normalization: str) -> Preprocessing:
    return Preprocessing.build(normalization, resize=(size, size))


# (train, test) builders by the name recipes use in data.transform. A test builder gives its steps as data
# (a Preprocessing: evaluated through to_torchvision, described by export), or, in a plug-in, as a pipeline
register_transform("paper")((_paper_train, _paper_test))
register_transform("glyphs")((_glyphs_train, _glyphs_test))


def build_transform(name: str, train: bool, image_size: int, normalization: str = "imagenet", strength: float = 1.0) -> v2.Compose:
    """The named augmentation pipeline: ``train=True`` gives the random one, else the deterministic one
    (built from the transform's :class:`Preprocessing`, or a plug-in's own pipeline).

    ``strength`` scales the random one (cohort members' view diversity): the crop's smallest area moves
    towards full size below 1 and away from it above 1, rotations scale with it; 0 is crop-free."""
    train_builder, test_builder = TRANSFORMS.get(name, "data.transform")
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
    if strength < 0:
        raise ValueError(f"augmentation strength must be >= 0, got {strength}")
    if not train:
        test = test_builder(image_size, normalization)
        return to_torchvision(test) if isinstance(test, Preprocessing) else test
    return train_builder(image_size, normalization, strength)


def feed_each(pixels: torch.Tensor, feeds: tuple[tuple[int, str], ...]) -> tuple[torch.Tensor, ...]:
    """The same plain-RGB views as each model takes them, one ``(size, normalization)`` per model."""
    return tuple(to_model_input(pixels, size, normalization) for size, normalization in feeds)


def to_model_input(pixels: torch.Tensor, size: int, normalization: str) -> torch.Tensor:
    """Views in plain RGB, [0, 1] (``normalization: none``), as one model takes them: resized to ``size`` ×
    ``size`` (bilinear, antialiased, as ``v2.Resize`` does on tensors) and normalised by its convention.

    Two models with different input sizes or normalisations (a transfer from a foundation model) are fed the
    very same augmented view this way, each its own way, instead of two different random crops."""
    convention = Preprocessing.build(normalization, resize=(size, size))  # its pixel format, as the test images'
    if pixels.shape[-2:] != convention.size:
        pixels = F.interpolate(pixels.float(), size=convention.size, mode="bilinear", antialias=True, align_corners=False)
    if convention.channel_order == "BGR":
        pixels = _bgr_0_255(pixels)
    shape = (1, 3, 1, 1)
    return (pixels - pixels.new_tensor(convention.mean).view(shape)) / pixels.new_tensor(convention.std).view(shape)
