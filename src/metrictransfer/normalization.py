"""Input conventions of pretrained weights, by the name recipes use in ``data.normalization``.

Plain numbers, no torch: the configuration checks names against them when it is loaded.
"""

from __future__ import annotations

from metrictransfer.errors import ConfigError
from metrictransfer.registry import BACKBONES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Caffe-trained BN-Inception weights expect BGR channels in 0–255 with these means subtracted, std 1.
BN_INCEPTION_MEAN_BGR = (104.0, 117.0, 128.0)
# Input conventions of pretrained weights, by name: RGB in [0, 1], then (x - mean) / std.
NORMALIZATION_STATS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),  # torchvision's and most timm weights
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # Inception-v3/v4, many ViTs: [-1, 1]
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),  # CLIP, EVA
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),  # RGB in [0, 1] as it is (views that each model normalises itself)
}
NORMALIZATIONS = (*NORMALIZATION_STATS, "bn_inception")
# timm's pretrained_cfg key by which a model states an input convention mean/std cannot express
BGR_CONVENTION = "bgr_0_255"


def model_normalization(backbone: str) -> str:
    """The input convention of a timm backbone's weights (its pretrained configuration), by name: what
    ``data.normalization: model`` means. Weights trained on other statistics than the named ones are
    refused: a silent ImageNet default would feed them inputs they never saw."""
    from timm.models import get_pretrained_cfg  # deferred: importing timm takes a second the configuration need not pay

    BACKBONES.names()  # the backbones written here (bn_inception) register with timm when found

    cfg = get_pretrained_cfg(backbone)
    if cfg is None:
        raise ConfigError(
            f"data.normalization: model: timm has no pretrained configuration for {backbone!r}; "
            f"name the normalization ({', '.join(NORMALIZATIONS)})"
        )
    if getattr(cfg, "input_convention", None) == BGR_CONVENTION or (cfg.to_dict().get("input_convention") == BGR_CONVENTION):  # type: ignore[no-untyped-call]  # unannotated in timm
        return "bn_inception"
    for name, (mean, std) in NORMALIZATION_STATS.items():
        if all(abs(a - b) < 1e-3 for a, b in zip((*cfg.mean, *cfg.std), (*mean, *std))):
            return name
    raise ConfigError(
        f"data.normalization: model: {backbone!r} was trained with mean {cfg.mean} and std {cfg.std}, "
        f"which none of {', '.join(NORMALIZATION_STATS)} is"
    )
