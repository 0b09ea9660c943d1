"""BN-Inception (Ioffe & Szegedy 2015) as the timm model ``bn_inception``.

The embedding-transfer paper (Kim et al., CVPR 2021) and Proxy-Anchor train on BN-Inception with the
ImageNet weights of the widely used PyTorch port (Cadene's ``pretrainedmodels``, ``bninception``). This
module is written from the published architecture (Figure 5 of arXiv:1502.03167) with the port's flat
parameter names (``conv1_7x7_s2``, ``inception_3a_1x1_bn``, ..., ``last_linear``), so the port's state
dict loads with ``strict=True``. Layer details follow the port: every convolution has a bias, BatchNorm
uses PyTorch's defaults (eps 1e-5, momentum 0.1, affine), pools use ``ceil_mode=True``, the pool
branches of 3a–5a average (padding counted), 5b's max-pools, and the stride-2 blocks 3c and 4e have no
1×1 branch and pass their max-pooled input through unprojected.

Input convention: the weights expect **BGR** channels in **0–255** with the means (104, 117, 128)
(B, G, R) subtracted and std 1; ``data.normalization: bn_inception`` prepares exactly that, outside the
model (no channel flip happens inside). The pretrained cfg records it as ``input_convention:
"bgr_0_255"``; its ``mean``/``std`` are in timm's 0–1 scale and listed per *network* input channel
(B, G, R): ``(x/255 − m/255) / (1/255) = x − m``. A consumer of timm's RGB transforms must flip the
channels itself, which is what ``input_convention`` is for.

Input sides that are multiples of 32 (224, 256, ...) always work; as in the port, sizes that make an odd
map at 3c or 4e give branches of unequal sizes there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from timm.layers.classifier import create_classifier
from timm.models import (
    PretrainedCfg,
    build_model_with_cfg,
    generate_default_cfgs,
    register_model,
)
from torch import nn

from metrictransfer.errors import DamagedCheckpointError, MissingFileError
from metrictransfer.registry import register_backbone

WEIGHTS_URL = "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth"

# Block widths from Figure 5 of the paper (they equal the port's):
# (#1×1, #3×3 reduce, #3×3, #double 3×3 reduce, #double 3×3, pool, #pool proj).
# #1×1 == 0 marks a stride-2 block: no 1×1 branch, stride-2 3×3s, max pool passed through (#pool proj 0).
_BLOCKS: dict[str, tuple[int, int, int, int, int, str, int]] = {
    "3a": (64, 64, 64, 64, 96, "avg", 32),
    "3b": (64, 64, 96, 64, 96, "avg", 64),
    "3c": (0, 128, 160, 64, 96, "max", 0),
    "4a": (224, 64, 96, 96, 128, "avg", 128),
    "4b": (192, 96, 128, 96, 128, "avg", 128),
    "4c": (160, 128, 160, 128, 160, "avg", 128),
    "4d": (96, 128, 192, 160, 192, "avg", 128),
    "4e": (0, 128, 192, 192, 256, "max", 0),
    "5a": (352, 192, 320, 160, 224, "avg", 128),
    "5b": (352, 192, 320, 192, 224, "max", 128),
}


class _Concat(nn.Module):
    """Joins a block's branches along channels; a module so that hooks and feature_info can name a block's output."""

    def forward(self, *branches: torch.Tensor) -> torch.Tensor:
        return torch.cat(branches, 1)


class BNInception(nn.Module):
    """BN-Inception with the port's flat attribute names; forwards are plans of those names, built once."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, global_pool: str = "avg", drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.num_features = self.head_hidden_size = 1024
        self._stem = (
            self._unit("conv1_", "7x7_s2", in_chans, 64, 7, stride=2, relu="conv1_relu_7x7")
            + self._add("pool1_3x3_s2", nn.MaxPool2d(3, stride=2, ceil_mode=True))
            + self._unit("conv2_", "3x3_reduce", 64, 64, 1)
            + self._unit("conv2_", "3x3", 64, 192, 3)
            + self._add("pool2_3x3_s2", nn.MaxPool2d(3, stride=2, ceil_mode=True))
        )
        self._blocks: list[tuple[str, list[list[str]]]] = []
        channels = 192
        for name, widths in _BLOCKS.items():
            branches, channels = self._block(f"inception_{name}_", channels, *widths)
            self._blocks.append((f"inception_{name}_output", branches))
        assert channels == self.num_features
        self.global_pool, self.last_linear = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        # timm convention: the last map at each reduction (2, 4, 8, 16, 32), so hint stages line up with ResNets'.
        self.feature_info = [
            {"num_chs": 64, "reduction": 2, "module": "conv1_relu_7x7"},
            {"num_chs": 192, "reduction": 4, "module": "conv2_relu_3x3"},
            {"num_chs": 320, "reduction": 8, "module": "inception_3b_output"},
            {"num_chs": 608, "reduction": 16, "module": "inception_4d_output"},
            {"num_chs": 1024, "reduction": 32, "module": "inception_5b_output"},
        ]

    def _add(self, name: str, module: nn.Module) -> list[str]:
        setattr(self, name, module)
        return [name]

    def _unit(self, prefix: str, unit: str, in_chs: int, out_chs: int, kernel: int, stride: int = 1, relu: str | None = None) -> list[str]:
        """conv (with bias) → BN → ReLU, named ``{prefix}{unit}``, ``{prefix}{unit}_bn``, ``{prefix}relu_{unit}``."""
        conv = f"{prefix}{unit}"
        return (
            self._add(conv, nn.Conv2d(in_chs, out_chs, kernel, stride=stride, padding=kernel // 2))
            + self._add(f"{conv}_bn", nn.BatchNorm2d(out_chs))
            + self._add(relu or f"{prefix}relu_{unit}", nn.ReLU(inplace=True))
        )

    def _block(
        self, p: str, in_chs: int, n1x1: int, n3x3_reduce: int, n3x3: int, ndouble_reduce: int, ndouble: int, pool: str, nproj: int
    ) -> tuple[list[list[str]], int]:
        """One inception block from its branch widths; returns its branches (as module-name plans) and output channels."""
        stride = 1 if n1x1 else 2
        branches = [self._unit(p, "1x1", in_chs, n1x1, 1)] if n1x1 else []
        branches.append(self._unit(p, "3x3_reduce", in_chs, n3x3_reduce, 1) + self._unit(p, "3x3", n3x3_reduce, n3x3, 3, stride))
        branches.append(
            self._unit(p, "double_3x3_reduce", in_chs, ndouble_reduce, 1)
            + self._unit(p, "double_3x3_1", ndouble_reduce, ndouble, 3)
            + self._unit(p, "double_3x3_2", ndouble, ndouble, 3, stride)
        )
        if pool == "avg":
            pooling: nn.Module = nn.AvgPool2d(3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
        else:
            pooling = nn.MaxPool2d(3, stride=stride, padding=1 if stride == 1 else 0, ceil_mode=True)
        pool_branch = self._add(f"{p}pool", pooling)
        if nproj:
            pool_branch += self._unit(p, "pool_proj", in_chs, nproj, 1)
        branches.append(pool_branch)
        self._add(f"{p}output", _Concat())
        return branches, n1x1 + n3x3 + ndouble + (nproj or in_chs)

    def _run(self, plan: list[str], x: torch.Tensor) -> torch.Tensor:
        for name in plan:
            x = getattr(self, name)(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._run(self._stem, x)
        for output, branches in self._blocks:
            x = getattr(self, output)(*(self._run(branch, x) for branch in branches))
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.last_linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return cast(nn.Module, self.last_linear)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        pool_type = self.global_pool.pool_type if global_pool is None else global_pool
        self.global_pool, self.last_linear = create_classifier(self.num_features, num_classes, pool_type=pool_type)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The port's checkpoint as this model's state dict: 1-D tensors stored as (1, C) are squeezed to (C,).

    Copies of the file differ: the older ``bn_inception-9f5701afb96c8044.pth`` stores BN tensors as (1, C)
    (tsn-pytorch issue 74), and Proxy-Anchor squeezes every (1, ...) tensor of 52deb4733 before loading,
    while the port itself loads 52deb4733 unchanged. Only a tensor whose counterpart here is (C,) is
    squeezed, so no other shape mismatch is hidden. Used by ``pretrained=True`` and by
    ``metrictransfer.models.load_backbone_weights`` for a local copy of the file.
    """
    own = model.state_dict()
    filtered = {}
    for key, value in state_dict.items():
        target = own.get(key)
        if target is not None and target.dim() == 1 and value.shape == (1, target.shape[0]):
            value = value.reshape(-1)
        filtered[key] = value
    return filtered


def download_weights(cache_dir: str | Path | None = None) -> str:
    """The port's ImageNet weights (``WEIGHTS_URL``) in torch hub's cache, downloaded only when not there yet.

    Of the file's SHA-256 only the 9 hex digits in its name (``52deb4733``) are known; torch.hub verifies
    that prefix on download, and that is all that is verified (a file already in the cache is not
    checked again). Without network access this fails with one line saying how to use a local copy.
    """
    folder = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
    filename = Path(urlparse(WEIGHTS_URL).path).name
    path = folder / filename
    if path.is_file():
        return str(path)
    match = re.search(r"-([a-f0-9]+)\.", filename)
    assert match is not None, WEIGHTS_URL  # the URL is a constant whose file name carries the hash prefix
    hash_prefix = match.group(1)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(WEIGHTS_URL, str(path), hash_prefix=hash_prefix, progress=False)
    except OSError as err:  # URLError, HTTPError, timeouts, an unwritable cache
        reason = getattr(err, "reason", None) or err
        raise MissingFileError(
            f"cannot download the bn_inception ImageNet weights from {WEIGHTS_URL} ({reason}): download that file "
            "elsewhere and pass it as model.weights: FILE (with model.pretrained: false)"
        ) from None
    except RuntimeError as err:
        if "invalid hash value" not in str(err):
            raise
        raise DamagedCheckpointError(
            f"the file downloaded from {WEIGHTS_URL} is not the published one: its SHA-256 does not start with "
            f"{hash_prefix} ({err}); nothing was kept, try again or pass a verified copy as model.weights: FILE"
        ) from None
    return str(path)


@dataclass
class _BNInceptionCfg(PretrainedCfg):
    """timm's pretrained cfg plus the input convention (timm has no field for channel order or value range)."""

    input_convention: str = "bgr_0_255"


default_cfgs = generate_default_cfgs(
    {
        "bn_inception.cadene_in1k": _BNInceptionCfg(
            url=WEIGHTS_URL,
            input_size=(3, 224, 224),
            pool_size=(7, 7),
            interpolation="bilinear",
            crop_pct=224 / 256,
            mean=tuple(m / 255 for m in (104.0, 117.0, 128.0)),  # B, G, R on timm's 0–1 scale
            std=(1 / 255,) * 3,
            num_classes=1000,
            first_conv="conv1_7x7_s2",
            classifier="last_linear",
            input_convention="bgr_0_255",
            origin_url="https://github.com/Cadene/pretrained-models.pytorch",
            paper_ids="arXiv:1502.03167",
        ),
    }
)


@register_backbone("bn_inception")
@register_model
def bn_inception(pretrained: bool = False, **kwargs: Any) -> BNInception:
    """BN-Inception; ``pretrained=True`` loads the port's ImageNet weights (see ``download_weights``)."""
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if pretrained and not any(overlay.get(k) for k in ("state_dict", "file", "url", "hf_hub_id")):
        overlay["file"] = download_weights(kwargs.get("cache_dir"))  # hash-checked, unlike timm's own URL download
    return build_model_with_cfg(
        BNInception,
        "bn_inception",
        pretrained,
        pretrained_cfg_overlay=overlay or None,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg={"feature_cls": "hook", "no_rewrite": True},
        **kwargs,
    )
