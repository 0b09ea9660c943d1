"""timm model names and what their pretrained configurations say (weights tags, input size), read without
building a model: what the configuration checks when it is loaded.

timm is imported inside the functions: importing it takes a second that ``--help`` need not pay.
"""

from __future__ import annotations

from metrictransfer.errors import ConfigError
from metrictransfer.registry import BACKBONES


def check_backbone_name(backbone: str) -> None:
    """A timm architecture, optionally with the tag of its weights (``resnet50.tv_in1k``), or ConfigError."""
    import timm

    arch, _, tag = backbone.partition(".")
    BACKBONES.names()  # backbones written here or by plug-ins register with timm when found
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch}*")[:10]
        raise ConfigError(f"unknown timm backbone {arch!r}" + (f"; similar names: {', '.join(close)}" if close else ""))
    if tag and backbone not in timm.list_pretrained(backbone):
        known = [name.partition(".")[2] for name in timm.list_pretrained(f"{arch}.*")]
        raise ConfigError(f"timm has no weights {tag!r} for {arch!r}; its weights: {', '.join(known) or 'none'}")


def pretrained_input_size(name: str) -> int | None:
    """The square side a timm model's pretrained configuration gives its inputs (None: it states none)."""
    from timm.models import get_pretrained_cfg

    BACKBONES.names()
    cfg = get_pretrained_cfg(name)
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return int(size[-1]) if size else None
