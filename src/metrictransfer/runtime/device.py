"""The torch device a run, an evaluation or a search uses."""

from __future__ import annotations

import torch

from metrictransfer.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else the CPU; ``cuda`` without CUDA is a :class:`ConfigError`."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but CUDA is not available here; use device: auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
