"""Datasets by the name recipes use in ``data.dataset``."""

from __future__ import annotations

from typing import Callable

from torch.utils.data import Dataset

from metrictransfer.config import DataConfig


def _glyphs(config: DataConfig, split: str) -> Dataset:
    from metrictransfer.data.glyphs import GlyphsDataset

    return GlyphsDataset(
        split=split,
        seed=config.glyph_seed,
        image_size=config.image_size,
        renders=config.glyph_renders,
        num_classes=config.num_classes,
    )


DATASETS: dict[str, Callable[[DataConfig, str], Dataset]] = {"glyphs": _glyphs}


def build_dataset(config: DataConfig, split: str) -> Dataset:
    """One split of the configured dataset; items are ``(PIL image, label)``, labels 0-based per split."""
    if config.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; valid names: {', '.join(sorted(DATASETS))}")
    return DATASETS[config.dataset](config, split)
