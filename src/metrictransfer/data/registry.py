"""Datasets by the name recipes use in ``data.dataset``, and their splits.

Each dataset registers itself where it is defined (``@register_dataset``): a reader of annotation files
(``reader="root"``: fixed splits; ``reader="class_split"``: the user's own data, split by class on request)
or, with ``builder=True``, a function that builds a split itself (the generated glyphs).

Every dataset :func:`build_dataset` returns is a :class:`~metrictransfer.data.protocol.RetrievalDataset`:
with its labels, ``dataset_name``, ``split`` and ``item_names`` (one stable name per item, in order: the
relative image path, or a synthetic id for generated data), so that a file of embeddings can say which
items its rows are and be checked against a dataset.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from metrictransfer.config import DataConfig
from metrictransfer.data.index import ImageIndex
from metrictransfer.data.protocol import RetrievalDataset, builder_dataset
from metrictransfer.errors import ConfigError
from metrictransfer.registry import DATASETS, register_dataset

if TYPE_CHECKING:  # torch is imported where a split is built: reading annotation files (data inspect) needs none
    from metrictransfer.data.glyphs import GlyphsDataset
    from metrictransfer.data.images import ImageFolderDataset


def glyph_item_names(dataset: GlyphsDataset, config: DataConfig, split: str) -> list[str]:
    """``glyphs:<split>:<index>:seed=<glyph_seed>:<size>px:U+<code point>:<font>#<render>`` for each item.

    Glyphs have no files; these names change whenever the item at a row would be another image: another
    split, order, seed, image size, class subset (``num_classes``) or font.
    """
    renders: dict[tuple[int, int], int] = {}
    names = []
    for i, (label, font) in enumerate(zip(dataset.global_labels.tolist(), dataset.font_ids.tolist())):
        render = renders[label, font] = renders.get((label, font), -1) + 1
        char = dataset.classes[int(dataset.labels[i])]
        names.append(f"glyphs:{split}:{i}:seed={config.glyph_seed}:{config.image_size}px:U+{ord(char):04X}:{dataset.fonts[font]}#{render}")
    return names


@register_dataset("glyphs", builder=True, needs_root=False)
def build_glyphs(config: DataConfig, split: str) -> GlyphsDataset:
    """The generated demo data (no files): Unicode glyphs rendered in several fonts."""
    from metrictransfer.data.glyphs import GlyphsDataset

    dataset = GlyphsDataset(
        split=split,
        seed=config.glyph_seed,
        image_size=config.image_size,
        renders=config.glyph_renders,
        num_classes=config.num_classes,
    )
    dataset.item_names = glyph_item_names(dataset, config, split)
    return dataset


def read_splits(config: DataConfig, combine_query_gallery: bool = True) -> dict[str, ImageIndex]:
    """Every split of a file-based dataset, indexed from its annotation files (no image opened).

    The readers refuse splits that share images or (with ``train``) classes. Where the data has
    ``query`` and ``gallery`` but no ``test`` split (In-Shop), ``test`` is both together, with
    ``is_query`` / ``is_gallery`` masks: evaluation is query against gallery.
    """
    entry = DATASETS.entry(config.dataset, "data.dataset")
    if entry.info.get("builder"):
        raise ConfigError(f"dataset {config.dataset!r} is generated, not read from annotation files")
    if entry.info.get("reader") == "class_split":
        splits = dict(entry.component(config.root, config.test_fraction, config.train_classes, config.test_classes))
    else:
        splits = dict(entry.component(config.root))
    if combine_query_gallery and "test" not in splits and {"query", "gallery"} <= splits.keys():
        splits["test"] = _query_gallery(splits["query"], splits["gallery"])
    return splits


def _query_gallery(query: ImageIndex, gallery: ImageIndex) -> ImageIndex:
    """One index of query then gallery items, labelled by class name so both sides share labels."""
    classes = sorted(set(query.classes) | set(gallery.classes))
    position = {name: i for i, name in enumerate(classes)}
    labels = [position[side.classes[label]] for side in (query, gallery) for label in side.labels]
    is_query = np.arange(len(query) + len(gallery)) < len(query)
    listed = query.listing is not None and query.listing == gallery.listing and query.lines is not None and gallery.lines is not None
    return ImageIndex(
        query.root,
        query.paths + gallery.paths,
        np.asarray(labels),
        classes,
        is_query,
        ~is_query,
        listing=query.listing if listed else None,
        lines=np.concatenate([query.lines, gallery.lines]) if listed else None,
    )


def _limit_classes(index: ImageIndex, num_classes: int | None) -> ImageIndex:
    """Only the first ``num_classes`` labels (for tiny runs and tests)."""
    if num_classes is None:
        return index
    keep = index.labels < num_classes
    masks = [None if m is None else m[keep] for m in (index.is_query, index.is_gallery)]
    lines = None if index.lines is None else index.lines[keep]  # kept: errors name an item's line in its listing
    return ImageIndex(
        index.root,
        [p for p, k in zip(index.paths, keep) if k],
        index.labels[keep],
        index.classes[:num_classes],
        masks[0],
        masks[1],
        listing=index.listing if lines is not None else None,
        lines=lines,
    )


def _files(config: DataConfig, split: str) -> ImageFolderDataset:
    from metrictransfer.data.images import ImageFolderDataset

    splits = read_splits(config)
    if split not in splits:
        raise ConfigError(f"dataset {config.dataset!r} at {config.root} has no split {split!r}; it has: {', '.join(splits)}")
    index = _limit_classes(splits[split], config.num_classes)
    index.check_files(f"{config.dataset} {split}", skip_bad=config.skip_bad_images)
    dataset = ImageFolderDataset(index, skip_bad=config.skip_bad_images)  # item names: the index's paths
    dataset.dataset_name, dataset.split = config.dataset, split
    return dataset


def build_dataset(config: DataConfig, split: str) -> RetrievalDataset:
    """One split of the configured dataset; items are ``(PIL image, label)``, labels 0-based per split."""
    entry = DATASETS.entry(config.dataset, "data.dataset")
    if entry.info.get("reader") != "class_split" and (config.train_classes is not None or config.test_classes is not None):
        class_lists = [name for name in DATASETS.names() if DATASETS.info(name, "reader") == "class_split"]
        raise ConfigError(  # silently ignored, they would suggest a split that is not the one used
            f"data.train_classes / data.test_classes apply to {' and '.join(class_lists)} data only; "
            f"dataset {config.dataset!r} has fixed splits: leave them out"
        )
    if entry.info.get("builder"):
        return builder_dataset(entry.component(config, split), config.dataset, split)
    return _files(config, split)
