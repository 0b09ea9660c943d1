"""Any timm model as a frozen source of image features: a pretrained foundation model (DINOv2, CLIP, SigLIP,
EVA, ...) or any other timm architecture with a local weights file.

The features are the model's own (its pooling, no head of ours, no random layer), so a transfer learns the
space the model was trained to produce. The model only ever runs as a teacher: frozen, in eval mode and
without autograd (the transfer method sees to that), in the run's precision (``autocast_dtype``).
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from torch import nn

from metrictransfer.errors import ConfigError
from metrictransfer.model_names import check_backbone_name, pretrained_input_size
from metrictransfer.models.embedding import autocast_to, create_backbone, load_backbone_weights

#: How the features are read from the model: ``pooled`` is the model's own pooled, pre-logits output
#: (the CLS token or the token average for ViTs, as each model was trained; global pooling for CNNs);
#: ``cls`` the class token of the last layer; ``avg_max`` the sum of the average and the maximum over the
#: final feature map or the patch tokens (the pooling of this project's embedding models).
FEATURES = ("pooled", "cls", "avg_max")
Features = Literal["pooled", "cls", "avg_max"]


class PretrainedFeatures(nn.Module):
    """A timm model's image features, ``(N, 3, S, S)`` images → ``(N, embedding_dim)`` float32.

    ``image_size``: the side the model is built for; a ViT's position embeddings are resampled to it when
    it differs from the pretrained one (CNNs take any size). ``weights``: a local state dict, used instead
    of downloading (offline); ``pretrained``: timm's pretrained weights from its cache or the hub.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = True,
        weights: str | os.PathLike[str] | None = None,
        features: Features = "pooled",
        image_size: int | None = None,
        weights_key: str = "transfer.source.weights",
    ) -> None:
        super().__init__()
        if features not in FEATURES:
            raise ConfigError(f"unknown source features {features!r}; valid: {', '.join(FEATURES)}")
        check_backbone_name(name)
        download = pretrained and weights is None
        default_size = pretrained_input_size(name)
        self.model: Any
        try:  # global_pool=None: the model's own pooling; a ViT is built for image_size
            resized = {"img_size": image_size} if image_size is not None and image_size != default_size else {}
            self.model = create_backbone(name, download, weights_key=weights_key, global_pool=None, **resized)
        except TypeError as err:  # an architecture that takes any input size (a CNN) has no img_size
            if "img_size" not in str(err):
                raise
            self.model = create_backbone(name, download, weights_key=weights_key, global_pool=None)
        if weights is not None:
            load_backbone_weights(self.model, weights, adapt=True)
        self.name = name
        self.features = features
        self.image_size = image_size or default_size or 224
        self.prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0))
        if features == "cls" and (self.prefix_tokens < 1 or getattr(self.model, "cls_token", None) is None):
            raise ConfigError(f"source {name!r} has no class token: use features pooled or avg_max")
        self.autocast_dtype: torch.dtype | None = None  # set to the run's precision by the trainer
        self.requires_grad_(False)
        self.eval()
        with torch.no_grad():  # the width of the features, whatever the architecture's head does
            self.embedding_dim = int(self(torch.zeros(1, 3, self.image_size, self.image_size)).shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with autocast_to(self.autocast_dtype, images):
            if self.features == "pooled":
                out: torch.Tensor = self.model(images)  # built with num_classes=0: pooled pre-logits features
            else:
                out = self._read(self.model.forward_features(images))
        return out.float()

    def _read(self, maps: torch.Tensor) -> torch.Tensor:
        if maps.dim() == 3:  # tokens (N, T, D): prefix tokens (class, registers) first
            if self.features == "cls":
                return maps[:, 0]
            patches = maps[:, self.prefix_tokens :]
            return patches.mean(dim=1) + patches.amax(dim=1)
        if maps.dim() != 4:
            raise ConfigError(f"source {self.name!r}: cannot pool features of shape {tuple(maps.shape)}; use features: pooled")
        if getattr(self.model, "output_fmt", "NCHW") == "NHWC":  # e.g. Swin, some MetaFormers
            maps = maps.permute(0, 3, 1, 2)
        return maps.mean(dim=(2, 3)) + maps.amax(dim=(2, 3))

    def describe(self) -> dict[str, Any]:
        """What the run's records say of this source."""
        return {"name": self.name, "features": self.features, "image_size": self.image_size, "embedding_dim": self.embedding_dim}
