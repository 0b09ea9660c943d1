"""Which data a model trained on, recorded in its checkpoint, and the check that a source model never
trained on the images its target is evaluated on.

A run that starts from another run's model (``transfer.source_checkpoint``, ``classifier.source_checkpoint``)
is evaluated on classes (or, for classifiers, held-out images) that the source should never have seen:
otherwise the target's test figures measure what the source memorised. :func:`training_data_record`
is stored in every checkpoint; :func:`check_source_overlap` compares a source's record with the target's
evaluation set, by class name (or item name) within the same dataset identity (name and resolved root).
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from metrictransfer.config import DataConfig
from metrictransfer.data.protocol import RetrievalDataset
from metrictransfer.errors import DataError
from metrictransfer.registry import DATASETS

TRAINING_DATA_KEY = "training_data"
SHOWN = 5  # names an overlap error lists


def resolved_root(data: DataConfig) -> str | None:
    """The dataset's root as an absolute path; None for generated data (glyphs), whose classes follow
    from its settings alone."""
    if not data.root or not DATASETS.info(data.dataset, "needs_root", True):
        return None
    return str(Path(data.root).expanduser().resolve())


def class_names(dataset: RetrievalDataset) -> list[str]:
    """The names of the classes ``dataset``'s labelled items belong to, sorted."""
    labels, classes = dataset.labels, dataset.classes
    if classes is None:
        return []
    return sorted({str(classes[int(label)]) for label in np.unique(np.asarray(labels)) if label >= 0})


def items_digest(names: list[str]) -> str:
    """SHA-256 of the sorted item names, one per line."""
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()


def training_data_record(dataset: RetrievalDataset, data: DataConfig) -> dict[str, Any]:
    """What a checkpoint records of its training set: the dataset's name, its root (as given and resolved),
    the generated data's settings, the training classes' names and the training items (their number, a
    SHA-256 of their sorted names, and the names themselves, so that held-out images can be checked)."""
    record: dict[str, Any] = {
        "dataset": data.dataset,
        "root": data.root,
        "root_resolved": resolved_root(data),
        "split": dataset.split or "train",
        "glyph_seed": data.glyph_seed if data.dataset == "glyphs" else None,
        "num_classes": data.num_classes,
        "classes": class_names(dataset),
    }
    names = sorted(str(name) for name in dataset.item_names)
    record.update(num_images=len(names), items_sha256=items_digest(names), items="\n".join(names))
    return record


def check_source_overlap(
    source: str,
    record: dict[str, Any] | None,
    evaluation_set: RetrievalDataset,
    evaluation_data: DataConfig,
    allow_key: str,
    *,
    images: bool = False,
) -> None:
    """Refuse a source model that trained on any of the target's evaluation classes (``images``: any of its
    evaluation images), when both come from the same dataset (name and resolved root). ``allow_key``
    names the setting that allows it deliberately (the caller skips the check when it is set). A source
    without a record (written by an earlier metrictransfer, or outside ``train``) is let through with a
    warning; a source of another dataset, silently."""
    unchecked = f"it cannot be checked for leaks into this run's evaluation {'images' if images else 'classes'}"
    if record is None:
        warnings.warn(
            f"source checkpoint {source} does not record its training data (written by an earlier "
            f"metrictransfer, or outside `metrictransfer train`): {unchecked}",
            stacklevel=2,
        )
        return
    if record.get("dataset") != evaluation_data.dataset or record.get("root_resolved") != resolved_root(evaluation_data):
        return  # another dataset: nothing of the evaluation set can have been seen
    if images:
        kind = "held-out images"
        if record.get("items") is None:
            warnings.warn(f"source checkpoint {source} names no items: {unchecked}", stacklevel=2)
            return
        seen = set(str(record["items"]).split("\n"))
        overlap = sorted({str(name) for name in evaluation_set.item_names} & seen)
    else:
        kind = "evaluation classes"
        overlap = sorted(set(class_names(evaluation_set)) & {str(name) for name in record.get("classes", [])})
    if overlap:
        shown = ", ".join(overlap[:SHOWN]) + (", ..." if len(overlap) > SHOWN else "")
        raise DataError(
            f"source checkpoint {source} trained on {len(overlap)} of this run's {kind} ({shown}) of dataset "
            f"{evaluation_data.dataset!r}, so the run's test figures would measure what the source memorised; "
            f"use a source trained on other classes, or set {allow_key}: true to allow it deliberately"
        )
