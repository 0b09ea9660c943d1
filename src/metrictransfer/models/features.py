"""Intermediate feature maps taken with forward hooks, so models need no change for hint-based losses."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from metrictransfer.errors import ConfigError


class FeatureTaps:
    """Keeps the outputs of named submodules from forward passes run inside :meth:`capture` (``taps.features``,
    in order), and lets go of them when it ends, so no activation outlives its training step (evaluation
    passes, outside any capture, keep nothing).

    Hooks only read outputs; the model's forward and its results are unchanged.
    """

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.names = list(names)
        self._outputs: dict[str, torch.Tensor] = {}
        self._capturing = False
        self._handles = []
        for name in self.names:
            try:
                module = model.get_submodule(name)
            except AttributeError:
                available = [n for n, _ in model.named_modules() if n.count(".") <= 1 and n]
                raise ConfigError(f"no submodule {name!r} to take features from; top-level ones: {', '.join(available[:30])}") from None
            self._handles.append(module.register_forward_hook(self._keeper(name)))

    def _keeper(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def keep(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._capturing:
                self._outputs[name] = output

        return keep

    @property
    def features(self) -> list[torch.Tensor]:
        missing = [n for n in self.names if n not in self._outputs]
        if missing:
            raise RuntimeError(f"no output captured from {missing}: run the model's forward first")
        return [self._outputs[n] for n in self.names]

    @contextmanager
    def capture(self) -> Iterator[FeatureTaps]:
        """Keep the tapped outputs of forward passes inside the block; released when it ends."""
        self._capturing = True
        try:
            yield self
        finally:
            self._capturing = False
            self._outputs.clear()

    def clear(self) -> None:
        self._outputs.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


def last_stages(model: nn.Module, count: int) -> list[str]:
    """Names (relative to an ``EmbeddingModel``) of the backbone's last ``count`` stages, from timm's feature_info."""
    info = getattr(model.backbone, "feature_info", None)
    if not info:
        raise ConfigError("this backbone has no timm feature_info: name the layers explicitly (transfer.target_layers / source_layers)")
    modules = [f"backbone.{entry['module']}" for entry in info]
    if count > len(modules):
        raise ConfigError(f"asked for the last {count} stages but the backbone has {len(modules)}: {', '.join(modules)}")
    return modules[-count:]


@torch.no_grad()
def feature_shapes(model: nn.Module, names: list[str], image_size: int) -> list[torch.Size]:
    """Shapes (C, H, W) of the named feature maps for one image of the given size (a dry run in eval mode)."""
    taps = FeatureTaps(model, names)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        with taps.capture():
            model(torch.zeros(1, 3, image_size, image_size, device=device))
            return [f.shape[1:] for f in taps.features]
    finally:
        taps.remove()
        model.train(was_training)
