"""``metrictransfer data inspect``: what a dataset folder holds, split by split, and which listed files are
missing, empty or unreadable: each image is decoded as training decodes it, so a broken file is found here
rather than in a DataLoader worker mid-epoch."""

from __future__ import annotations

import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
from tqdm import tqdm

from metrictransfer.config import DataConfig
from metrictransfer.data.decode import open_rgb8_raw
from metrictransfer.data.registry import read_splits
from metrictransfer.data.workers import usable_cores
from metrictransfer.errors import ConfigError
from metrictransfer.registry import DATASETS

_QUOTED = 5
#: Fewer files than this per core are decoded in this process: starting a pool would cost more.
_FILES_PER_WORKER = 32
#: The text report names this many classes of a split, then says how many more there are.
_NAMED_CLASSES = 20


def _split_summary(
    labels: np.ndarray,
    missing: list[str],
    class_names: list[str],
    empty: list[str] | None = None,
    unreadable: list[str] | None = None,
) -> dict[str, Any]:
    """One split's counts; ``unreadable`` None when the images were not decoded (--no-decode)."""
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
        "unreadable_files": None if unreadable is None else len(unreadable),
        "first_unreadable": (unreadable or [])[:_QUOTED],
        "class_names": [class_names[c] for c in np.unique(labelled)] if class_names else [],
    }


def why_unreadable(path: str) -> str | None:
    """Why training could not decode the image at ``path`` (None: it can), decoded as training decodes it
    (:func:`~metrictransfer.data.decode.open_rgb8_raw`: EXIF orientation, mode conversion, decompression
    bombs refused), JPEGs at 1/8 scale, which still reads every byte."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # conversion notes are training's to tell; refusals still raise
            open_rgb8_raw(path, set(), check_only=True)
    except Exception as err:  # whatever stops decoding stops training too
        reason = str(err).replace(f" {path!r}", "") or type(err).__name__  # Pillow's "cannot identify image file '<path>'"
        return reason.splitlines()[0]
    return None


def _decode_all(paths: list[str], progress: bool) -> list[str | None]:
    """:func:`why_unreadable` of each path, in a process pool over the usable cores when there are enough
    files to pay for it; a progress bar on stderr with ``progress``."""
    bar = {"total": len(paths), "desc": "decoding images", "unit": "image", "disable": not progress, "leave": False, "file": sys.stderr}
    workers = min(usable_cores(), len(paths) // _FILES_PER_WORKER)
    if workers <= 1:
        with tqdm(paths, **bar) as files:
            return [why_unreadable(p) for p in files]
    with ProcessPoolExecutor(workers) as pool:
        # the pool forks its workers here, before the bar starts a thread of its own
        results = pool.map(why_unreadable, paths, chunksize=max(1, min(64, len(paths) // (workers * 8))))
        with tqdm(results, **bar) as answers:
            return list(answers)


def inspect_dataset(
    dataset: str, root: str | None = None, test_fraction: float = 0.5, decode: bool = True, progress: bool | None = None
) -> dict[str, Any]:
    """``{"dataset", "root", "decoded", "splits": {split: {"images", "classes", "smallest_class", "largest_class",
    "missing_files", "first_missing", "empty_files", "first_empty", "unreadable_files", "first_unreadable",
    "class_names"}}}`` (``class_names``: the split's classes, in label order; ``first_unreadable``: "path:
    reason"). Reads the annotation files, checks that each listed image exists and is not empty and, with
    ``decode``, decodes every other one as training would (``unreadable_files`` None without it). Malformed
    annotations and splits that share images or classes raise :class:`~metrictransfer.errors.DataError`, as
    training would. ``progress``: a bar on stderr while decoding (default: when stderr is a terminal)."""
    entry = DATASETS.entry(dataset, "--dataset")
    if entry.info.get("needs_root", True) and not root:
        raise ConfigError(f"dataset {dataset!r} needs data.root: pass --root (the folder holding its files; csv: the CSV file)")
    config = DataConfig(dataset=dataset, root=root, test_fraction=test_fraction)
    if dataset == "glyphs":
        from metrictransfer.data.glyphs import GlyphsDataset  # here: it needs torch, which files do not

        glyphs = {s: GlyphsDataset(s, seed=config.glyph_seed) for s in ("train", "test")}
        splits = {s: _split_summary(g.labels, [], g.classes, unreadable=[]) for s, g in glyphs.items()}
        return {"dataset": dataset, "root": None, "decoded": True, "splits": splits}
    indexes = read_splits(config, combine_query_gallery=False)
    problems = {name: index.file_problems() for name, index in indexes.items()}
    readable = {}  # each split's files that exist and are not empty: the ones to decode
    for name, index in indexes.items():
        skipped = set(problems[name][0]) | set(problems[name][1])
        readable[name] = [i for i in range(len(index)) if i not in skipped]
    unreadable: dict[str, list[str] | None] = {name: None for name in indexes}
    if decode:
        files = [os.path.join(index.root, index.paths[i]) for name, index in indexes.items() for i in readable[name]]
        reasons = iter(_decode_all(files, sys.stderr.isatty() if progress is None else progress))
        for name, index in indexes.items():
            found = [(index.paths[i], next(reasons)) for i in readable[name]]
            unreadable[name] = [f"{path}: {reason}" for path, reason in found if reason is not None]
    splits = {}
    for name, index in indexes.items():
        missing, empty = ([index.paths[i] for i in rows] for rows in problems[name])
        splits[name] = _split_summary(index.labels, missing, index.classes, empty, unreadable[name])
    return {"dataset": dataset, "root": str(root), "decoded": decode, "splits": splits}


def advice(report: dict[str, Any]) -> str | None:
    """One line saying what to do about the report's missing, empty or unreadable files; None when there are none."""
    splits = report["splits"].values()
    missing = sum(s["missing_files"] for s in splits)
    bad = sum(s["empty_files"] + (s["unreadable_files"] or 0) for s in splits)
    said = []
    if missing:
        said.append(f"{_files(missing)} missing: restore them or correct the annotation files")
    if bad:
        said.append(f"{_files(bad)} empty or unreadable: fix or remove them, or set data.skip_bad_images: true to train without them")
    return "; ".join(said) or None


def _files(count: int) -> str:
    return f"{count:,} listed files are" if count > 1 else "1 listed file is"


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{report['dataset']} at {report['root'] or '(generated)'}"]
    header = f"  {'split':<8} {'images':>8} {'classes':>8} {'smallest':>9} {'largest':>8} {'missing':>8} {'empty':>6} {'unreadable':>10}"
    lines.append(header)
    for name, s in report["splits"].items():
        small = "-" if s["smallest_class"] is None else s["smallest_class"]
        large = "-" if s["largest_class"] is None else s["largest_class"]
        unreadable = "-" if s.get("unreadable_files") is None else f"{s['unreadable_files']:,}"  # "-": not decoded
        lines.append(
            f"  {name:<8} {s['images']:>8,} {s['classes']:>8,} {small:>9} {large:>8} {s['missing_files']:>8,}"
            f" {s['empty_files']:>6,} {unreadable:>10}"
        )
        if s["missing_files"]:
            lines.append(f"    missing, first: {', '.join(s['first_missing'])}")
        if s.get("empty_files"):
            lines.append(f"    {s['empty_files']:,} empty files (0 bytes: no image), first: {', '.join(s['first_empty'])}")
        if s.get("unreadable_files"):
            lines.append(f"    {s['unreadable_files']:,} unreadable files, first: {'; '.join(s['first_unreadable'])}")
    for name, s in report["splits"].items():
        names = s.get("class_names") or []
        if names:
            more = f" …and {len(names) - _NAMED_CLASSES} more" if len(names) > _NAMED_CLASSES else ""
            lines.append(f"  {name} classes: {', '.join(names[:_NAMED_CLASSES])}{more}")
    return "\n".join(lines)
