"""Train and test transforms by name (torchvision.transforms.v2)."""

from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms import v2

from metrictransfer.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Caffe-trained BN-Inception weights expect BGR channels in 0–255 with these means subtracted, std 1.
BN_INCEPTION_MEAN_BGR = (104.0, 117.0, 128.0)
# Input conventions of pretrained weights, by name: RGB in [0, 1], then (x - mean) / std.
NORMALIZATION_STATS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),  # torchvision's and most timm weights
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # Inception-v3/v4, many ViTs: [-1, 1]
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),  # CLIP, EVA
}
NORMALIZATIONS = (*NORMALIZATION_STATS, "bn_inception")
# timm's pretrained_cfg key by which a model states an input convention mean/std cannot express
BGR_CONVENTION = "bgr_0_255"


def model_normalization(backbone: str) -> str:
    """The input convention of a timm backbone's weights (its pretrained configuration), by name: what
    ``data.normalization: model`` means. Weights trained on other statistics than the named ones are
    refused: a silent ImageNet default would feed them inputs they never saw."""
    from timm.models import get_pretrained_cfg

    import metrictransfer.models  # noqa: F401  (registers the backbones written here, e.g. bn_inception)

    cfg = get_pretrained_cfg(backbone)
    if cfg is None:
        raise ConfigError(f"data.normalization: model: timm has no pretrained configuration for {backbone!r}; "
                          f"name the normalization ({', '.join(NORMALIZATIONS)})")
    if getattr(cfg, "input_convention", None) == BGR_CONVENTION or (cfg.to_dict().get("input_convention") == BGR_CONVENTION):
        return "bn_inception"
    for name, (mean, std) in NORMALIZATION_STATS.items():
        if all(abs(a - b) < 1e-3 for a, b in zip((*cfg.mean, *cfg.std), (*mean, *std))):
            return name
    raise ConfigError(f"data.normalization: model: {backbone!r} was trained with mean {cfg.mean} and std {cfg.std}, "
                      f"which none of {', '.join(NORMALIZATION_STATS)} is")


def _bgr_0_255(image: torch.Tensor) -> torch.Tensor:
    return image.flip(-3) * 255.0


def _to_tensor(normalization: str = "imagenet") -> list:
    """PIL image → normalised float tensor, by the convention the backbone's weights were trained with."""
    steps = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if normalization == "bn_inception":
        return steps + [v2.Lambda(_bgr_0_255), v2.Normalize(BN_INCEPTION_MEAN_BGR, (1.0, 1.0, 1.0))]
    return steps + [v2.Normalize(*NORMALIZATION_STATS[normalization])]


def _crop_scale(smallest: float, strength: float) -> tuple[float, float]:
    """RandomResizedCrop's area range, widened or narrowed around full size by ``strength`` (1: as given)."""
    return max(0.02, 1.0 - strength * (1.0 - smallest)), 1.0


def _paper_train(size: int, normalization: str, strength: float = 1.0) -> v2.Compose:
    # The papers' augmentation: RandomResizedCrop + horizontal flip.
    return v2.Compose([v2.RGB(), v2.RandomResizedCrop(size, scale=_crop_scale(0.08, strength)), v2.RandomHorizontalFlip(),
                       *_to_tensor(normalization)])


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


TRANSFORMS: dict[str, tuple[Callable[[int, str], v2.Compose], Callable[[int, str], v2.Compose]]] = {
    "paper": (_paper_train, _paper_test),
    "glyphs": (_glyphs_train, _glyphs_test),
}


def build_transform(
    name: str, train: bool, image_size: int, normalization: str = "imagenet", strength: float = 1.0
) -> v2.Compose:
    """The named augmentation pipeline: ``train=True`` gives the random one, else the deterministic one.

    ``strength`` scales the random one (cohort members' view diversity): the crop's smallest area moves
    towards full size below 1 and away from it above 1, rotations scale with it; 0 is crop-free."""
    if name not in TRANSFORMS:
        raise ConfigError(f"unknown transform {name!r}; valid names: {', '.join(sorted(TRANSFORMS))}")
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
    if strength < 0:
        raise ValueError(f"augmentation strength must be >= 0, got {strength}")
    if not train:
        return TRANSFORMS[name][1](image_size, normalization)
    return TRANSFORMS[name][0](image_size, normalization, strength)
