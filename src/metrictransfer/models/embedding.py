"""The embedding model: a timm backbone, GAP + GMP pooling, a linear embedding head."""

from __future__ import annotations

import os
import socket
import sys
import threading
import urllib.request
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
import torch.nn.functional as F
from torch import nn

from metrictransfer.errors import CheckpointError, MissingFileError, setting
from metrictransfer.model_names import check_backbone_name
from metrictransfer.models.bn_inception import BNInception, checkpoint_filter_fn


class EmbeddingModel(nn.Module):
    """Backbone feature map → (global average + global max pool) → Linear → optional L2 norm.

    The pooled sum and the orthogonally initialised, zero-bias head follow the embedding-transfer
    paper's models. The backbone is any timm model name; timm builds it with ``num_classes=0`` and no
    pooling so that we pool ourselves.
    """

    backbone: Any  # a timm model: forward_features, num_features and feature_info are timm's, not nn.Module's
    head: nn.Linear

    def __init__(
        self,
        backbone: str = "resnet18",
        embedding_dim: int = 512,
        pretrained: bool = False,
        weights: str | os.PathLike[str] | None = None,
        normalize: bool = False,
        in_chans: int = 3,
        freeze_batchnorm: bool = False,
    ) -> None:
        super().__init__()
        check_backbone_name(backbone)
        # a local weights file replaces every backbone weight: nothing to download then
        self.backbone = create_backbone(backbone, pretrained and weights is None, in_chans)
        if weights is not None:
            load_backbone_weights(self.backbone, weights)
        self.feature_dim: int = self.backbone.num_features
        self.head = nn.Linear(self.feature_dim, embedding_dim)
        nn.init.orthogonal_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.normalize = normalize
        self.embedding_dim = embedding_dim
        self.backbone_name = backbone
        # bf16 / fp16 autocast of the network only: embeddings leave in float32, so losses never see half precision
        self.autocast_dtype: torch.dtype | None = None
        self.freeze_batchnorm = freeze_batchnorm

    def train(self, mode: bool = True) -> "EmbeddingModel":
        super().train(mode)
        if self.freeze_batchnorm:  # running statistics only: nothing depends on the batch's composition
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def _autocast(self, images: torch.Tensor) -> AbstractContextManager[Any]:
        return autocast_to(self.autocast_dtype, images)

    def architecture(self) -> dict[str, Any]:
        """What rebuilds this model around a state dict (checkpoints store it per model)."""
        return {"backbone": self.backbone_name, "embedding_dim": self.embedding_dim, "normalize": self.normalize}

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        return feature_map.mean(dim=(2, 3)) + feature_map.amax(dim=(2, 3))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The pooled backbone features, before the head (a classifier's penultimate layer)."""
        with self._autocast(images):
            features: torch.Tensor = self.backbone.forward_features(images)
            return self.pool(features).float()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with self._autocast(images):
            features: torch.Tensor = self.backbone.forward_features(images)
            embeddings = self.head(self.pool(features)).float()
        return F.normalize(embeddings, dim=1) if self.normalize else embeddings


# How long a connection to the host of pretrained weights may take before the download counts as offline.
HOST_PROBE_SECONDS = 2.0


def create_backbone(backbone: str, pretrained: bool, in_chans: int = 3, weights_key: str = "model.weights", **timm_kwargs: Any) -> Any:
    """The timm backbone without classifier or pooling (``timm_kwargs`` replace those defaults of
    ``timm.create_model``: ``global_pool`` to keep the model's own pooling, ``img_size``, ...; ``weights_key``:
    the configuration key that names a local weights file instead, for the message). Pretrained weights on the Hugging Face hub come from
    the local cache when the hub cannot be reached within :data:`HOST_PROBE_SECONDS` (or ``HF_HUB_OFFLINE=1``),
    and weights in neither place are a one-line :class:`MissingFileError` in seconds, not a minute of retries.
    (Weights at a URL, such as bn_inception's, fail on their own: ``download_weights`` names the URL.)"""
    kwargs: dict[str, Any] = {"num_classes": 0, "global_pool": "", "in_chans": in_chans, **timm_kwargs}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # None: the architecture's own default
    hub = _hub_address(backbone) if pretrained else None
    if hub is None:
        return timm.create_model(backbone, pretrained=pretrained, **kwargs)
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    forced = bool(constants.HF_HUB_OFFLINE) or _env_flag("HF_HUB_OFFLINE")
    offline = forced or not _reachable(hub)
    before = constants.HF_HUB_OFFLINE  # read by huggingface_hub at each request: offline, it answers from its cache
    constants.HF_HUB_OFFLINE = before or offline
    try:
        return timm.create_model(backbone, pretrained=True, **kwargs)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        if not offline:
            raise
        why = "HF_HUB_OFFLINE is set" if forced else f"{urlparse(hub).hostname} cannot be reached"
        raise MissingFileError(
            f"the pretrained weights of backbone {backbone!r} are not in the local cache and {why}; set "
            f"{setting(weights_key, 'FILE', ': ')} (a local state dict) to train offline, or connect to download them"
        ) from None
    finally:
        constants.HF_HUB_OFFLINE = before


def _hub_address(backbone: str) -> str | None:
    """The Hugging Face hub's address when timm downloads the backbone's pretrained weights from there; None
    when it takes them from elsewhere (a URL, a local file) or huggingface_hub is not installed."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(backbone)
    if cfg is None or not cfg.hf_hub_id or cfg.state_dict or cfg.file or cfg.source == "local-dir":
        return None
    try:
        from huggingface_hub import constants
    except ImportError:  # timm downloads from the cfg's URL instead
        return None
    return str(constants.ENDPOINT)


def _reachable(url: str, seconds: float = HOST_PROBE_SECONDS) -> bool:
    """Whether a TCP connection to ``url``'s host (or to the proxy the environment names for it) opens within
    ``seconds``, name lookup included."""
    parts = urlparse(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and host and not urllib.request.proxy_bypass(host):
        via = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        host, port = via.hostname, via.port or (443 if via.scheme == "https" else 80)
    if not host:
        return False
    address, opened = (host, port), threading.Event()

    def connect() -> None:
        try:
            with socket.create_connection(address, timeout=seconds):
                opened.set()
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)  # a name lookup can outlast any socket timeout
    thread.start()
    thread.join(seconds)
    return opened.is_set()


def autocast_to(dtype: torch.dtype | None, images: torch.Tensor) -> AbstractContextManager[Any]:
    """Autocast to the run's half precision (``dtype``) on the images' device, or nothing for float32."""
    return nullcontext() if dtype is None else torch.autocast(images.device.type, dtype=dtype)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def load_backbone_weights(backbone: nn.Module, path: str | os.PathLike[str], adapt: bool = False) -> None:
    """Load a local state dict (``.pt``/``.pth`` or ``.safetensors``) into a timm backbone. ``adapt``: pass
    it through the model family's own ``checkpoint_filter_fn`` first, as timm does for its downloads (a
    ViT's position embeddings resampled to the size it was built for, original checkpoints' names mapped)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"backbone weights file not found: {path}")
    state: Any  # a state dict, or whatever else the file holds (checked below)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise several types for a file they cannot read
        # torch's weights-only message advises weights_only=False, unsafe for a file from elsewhere: not passed on
        unsafe = "weights only load failed" in str(err).lower()
        reason = "it holds Python objects besides tensors, or is not a PyTorch file" if unsafe else _first_line(err)
        raise CheckpointError(f"cannot read backbone weights {path}: not a state dict that loads safely ({reason})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"backbone weights {path} hold a {type(state).__name__}, not a state dict of tensors (parameter name → tensor)"
        )
    if isinstance(backbone, BNInception):  # copies of its ImageNet file store 1-D tensors as (1, C)
        state = checkpoint_filter_fn(state, backbone)
    elif adapt:
        family_filter = getattr(sys.modules.get(type(backbone).__module__), "checkpoint_filter_fn", None)
        if family_filter is not None:
            try:
                state = family_filter(state, backbone)
            except Exception as err:  # each family's filter raises its own types for a state it cannot map
                raise CheckpointError(f"weights in {path} do not fit the backbone: {_first_line(err)}") from None
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches: another architecture's weights
        raise CheckpointError(f"weights in {path} do not fit the backbone: {str(err).splitlines()[-1].strip()}") from None
    # A classifier in the file is expected (timm backbones are built headless); anything else is not.
    unexpected = [k for k in unexpected if not k.startswith(("fc.", "head", "classifier", "last_linear."))]
    if missing or unexpected:
        raise CheckpointError(f"weights in {path} do not fit the backbone: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
