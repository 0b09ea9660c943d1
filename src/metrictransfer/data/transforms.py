"""Train and test transforms by name (torchvision.transforms.v2)."""

from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_tensor() -> list:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


def _paper_train(size: int) -> v2.Compose:
    # The papers' augmentation: RandomResizedCrop + horizontal flip.
    return v2.Compose([v2.RGB(), v2.RandomResizedCrop(size), v2.RandomHorizontalFlip(), *_to_tensor()])


def _paper_test(size: int) -> v2.Compose:
    # Resize(256) + CenterCrop(224) at the paper's size, the same ratio at other sizes.
    return v2.Compose([v2.RGB(), v2.Resize(round(size * 256 / 224)), v2.CenterCrop(size), *_to_tensor()])


def _glyphs_train(size: int) -> v2.Compose:
    # No flip: a mirrored character is often another character (b/d, p/q, Я/R).
    return v2.Compose(
        [
            v2.RGB(),
            v2.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(0.8, 1.25)),
            v2.RandomRotation(10),
            *_to_tensor(),
        ]
    )


def _glyphs_test(size: int) -> v2.Compose:
    return v2.Compose([v2.RGB(), v2.Resize((size, size)), *_to_tensor()])


TRANSFORMS: dict[str, tuple[Callable[[int], v2.Compose], Callable[[int], v2.Compose]]] = {
    "paper": (_paper_train, _paper_test),
    "glyphs": (_glyphs_train, _glyphs_test),
}


def build_transform(name: str, train: bool, image_size: int) -> v2.Compose:
    """The named augmentation pipeline: ``train=True`` gives the random one, else the deterministic one."""
    if name not in TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; valid names: {', '.join(sorted(TRANSFORMS))}")
    return TRANSFORMS[name][0 if train else 1](image_size)
