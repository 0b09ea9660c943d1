"""``metrictransfer data inspect``: what a dataset folder holds, split by split, and which listed files are missing."""

from __future__ import annotations

from typing import Any

import numpy as np

from metrictransfer.config import DataConfig
from metrictransfer.data.registry import read_splits
from metrictransfer.errors import ConfigError
from metrictransfer.registry import DATASETS

_QUOTED = 5
#: The text report names this many classes of a split, then says how many more there are.
_NAMED_CLASSES = 20


def _split_summary(labels: np.ndarray, missing: list[str], class_names: list[str], empty: list[str] | None = None) -> dict[str, Any]:
    labelled = labels[labels >= 0]
    counts = np.bincount(labelled) if len(labelled) else np.zeros(0, dtype=np.int64)
    counts = counts[counts > 0]
    return {
        "images": int(len(labels)),
        "classes": int(len(counts)),
        "smallest_class": int(counts.min()) if len(counts) else None,
        "largest_class": int(counts.max()) if len(counts) else None,
        "missing_files": len(missing),
        "first_missing": missing[:_QUOTED],
        "empty_files": len(empty or []),
        "first_empty": (empty or [])[:_QUOTED],
        "class_names": [class_names[c] for c in np.unique(labelled)] if class_names else [],
    }


def inspect_dataset(dataset: str, root: str | None = None, test_fraction: float = 0.5) -> dict[str, Any]:
    """``{"dataset", "root", "splits": {split: {"images", "classes", "smallest_class", "largest_class",
    "missing_files", "first_missing", "empty_files", "first_empty", "class_names"}}}`` (``class_names``: the
    split's classes, in label order); reading only the annotation files and checking that each listed
    image exists and is not empty (none is opened). Malformed annotations and splits that share images or classes raise
    :class:`~metrictransfer.errors.DataError`, as training would."""
    entry = DATASETS.entry(dataset, "--dataset")
    if entry.info.get("needs_root", True) and not root:
        raise ConfigError(f"dataset {dataset!r} needs data.root: pass --root (the folder holding its files; csv: the CSV file)")
    config = DataConfig(dataset=dataset, root=root, test_fraction=test_fraction)
    if dataset == "glyphs":
        from metrictransfer.data.glyphs import GlyphsDataset  # here: it needs torch, which files do not

        glyphs = {s: GlyphsDataset(s, seed=config.glyph_seed) for s in ("train", "test")}
        splits = {s: _split_summary(g.labels, [], g.classes) for s, g in glyphs.items()}
        return {"dataset": dataset, "root": None, "splits": splits}
    indexes = read_splits(config, combine_query_gallery=False)
    splits = {
        name: _split_summary(index.labels, index.missing_files(), index.classes, index.empty_files()) for name, index in indexes.items()
    }
    return {"dataset": dataset, "root": str(root), "splits": splits}


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{report['dataset']} at {report['root'] or '(generated)'}"]
    lines.append(f"  {'split':<8} {'images':>8} {'classes':>8} {'smallest':>9} {'largest':>8} {'missing':>8}")
    for name, s in report["splits"].items():
        small = "-" if s["smallest_class"] is None else s["smallest_class"]
        large = "-" if s["largest_class"] is None else s["largest_class"]
        lines.append(f"  {name:<8} {s['images']:>8,} {s['classes']:>8,} {small:>9} {large:>8} {s['missing_files']:>8,}")
        if s["missing_files"]:
            lines.append(f"    missing, first: {', '.join(s['first_missing'])}")
        if s.get("empty_files"):
            lines.append(f"    {s['empty_files']:,} empty files (0 bytes: no image), first: {', '.join(s['first_empty'])}")
    for name, s in report["splits"].items():
        names = s.get("class_names") or []
        if names:
            more = f" …and {len(names) - _NAMED_CLASSES} more" if len(names) > _NAMED_CLASSES else ""
            lines.append(f"  {name} classes: {', '.join(names[:_NAMED_CLASSES])}{more}")
    return "\n".join(lines)
