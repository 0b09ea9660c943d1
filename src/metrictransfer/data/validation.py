"""Validation data carved from the training split, so that epochs, checkpoints and hyperparameters are
chosen without the test split (the protocol of Musgrave, Belongie and Lim, "A Metric Learning Reality
Check", ECCV 2020): whole classes for retrieval, whose test classes are unseen ones too; images of every
class for a classifier, and for unlabelled images, whose test is on images of the same distribution."""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np

from metrictransfer.config import ValidationConfig
from metrictransfer.data.holdout import LabelledSubset
from metrictransfer.data.protocol import RetrievalDataset
from metrictransfer.errors import ConfigError

Unit = Literal["classes", "images"]

#: Fewer validation classes than this give a noisy figure: a warning at the start (one class is refused).
FEW_CLASSES = 5


def validation_folds(ids: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """``ids`` shuffled by ``seed`` and cut into ``folds`` parts of sizes differing by at most one: every
    id lands in exactly one fold, and the folds depend on nothing but the ids and the seed."""
    shuffled = np.random.default_rng(seed).permutation(np.asarray(ids))
    return [np.sort(part) for part in np.array_split(shuffled, folds)]


def split_validation(dataset: RetrievalDataset, config: ValidationConfig, unit: Unit) -> tuple[LabelledSubset, LabelledSubset]:
    """(training part, validation part) of a training split. ``unit`` "classes": the validation classes
    are disjoint from the training part's, whose classes are renumbered 0..C'-1; "images": a share of
    each class's images (of all images, unlabelled) is held out."""
    labels = np.asarray(dataset.labels)
    if unit == "classes" and (labels < 0).any():
        unit = "images"  # unlabelled images have no classes to hold out
    if unit == "classes":
        held_classes = _validation_classes(dataset, labels, config)
        held = np.isin(labels, held_classes)
        classes = len(np.unique(labels))
        fewest = classes // config.folds if config.folds > 1 else len(held_classes)
        check_validation_classes(config, fewest, classes, int(held.sum()))
        return LabelledSubset(dataset, np.flatnonzero(~held), relabel=True), LabelledSubset(dataset, np.flatnonzero(held))
    if isinstance(config.classes, list):
        raise ConfigError("data.validation.classes: a list of classes cannot hold out images of every class; give a share (e.g. 0.2)")
    held_images: list[np.ndarray] = []
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if (labels >= 0).all() else [np.arange(len(labels))]
    for i, members in enumerate(groups):
        if config.folds > 1:
            held_images.append(validation_folds(members, config.folds, config.seed + i)[config.fold])
        else:
            order = np.random.default_rng([config.seed, i]).permutation(members)
            n_held = max(1, round(float(config.classes) * len(members))) if len(members) >= 2 else 0
            held_images.append(order[:n_held])
    held = np.zeros(len(labels), dtype=bool)
    held[np.concatenate(held_images).astype(np.int64)] = True
    return LabelledSubset(dataset, np.flatnonzero(~held)), LabelledSubset(dataset, np.flatnonzero(held))


def check_validation_classes(config: ValidationConfig, held: int, classes: int, images: int) -> None:
    """Refuse validation on one class (every image's neighbours are then of its class: recall 1.0 whatever
    the model, so every epoch and trial looks perfect), and warn, once at the start, that fewer than
    :data:`FEW_CLASSES` classes give a noisy figure. ``held``: the fewest of the ``classes`` training
    classes that a run of this split validates on (its smallest fold); ``images``: this split's validation images."""
    if config.folds > 1:
        counts = (
            f"data.validation.folds={config.folds} of {classes} training classes validates on as few as {held} "
            f"(fold {config.fold}: {images:,} images)"
        )
        more = f"use at most {classes // 2} folds" if classes >= 4 else "add classes to the data"
    else:
        counts = f"data.validation.classes={config.classes} holds out {held} of {classes} training classes ({images:,} images)"
        share = math.ceil(200 / classes) / 100
        more = f"hold out at least 2 (e.g. data.validation.classes={share:g})" if classes >= 3 else "add classes to the data"
    if held < 2:
        raise ConfigError(f"{counts}: recall on one class is 1.0 whatever the model; {more}")
    if held < FEW_CLASSES:
        warnings.warn(
            f"{counts}: recall on so few classes is noisy, its chance level high; hold out at least {FEW_CLASSES} "
            "classes where the data allows, and compare runs on it with care",
            stacklevel=3,
        )


def _validation_classes(dataset: RetrievalDataset, labels: np.ndarray, config: ValidationConfig) -> np.ndarray:
    present = np.unique(labels)
    if config.folds > 1:
        if len(present) < config.folds:
            raise ConfigError(
                f"data.validation.folds: {config.folds} folds need at least as many training classes; there are {len(present)}"
            )
        return validation_folds(present, config.folds, config.seed)[config.fold]
    if isinstance(config.classes, list):
        return _named_classes(dataset, present, config.classes)
    n_held = round(float(config.classes) * len(present))
    if not 1 <= n_held < len(present):
        raise ConfigError(
            f"data.validation.classes: {config.classes} of {len(present)} training classes is {n_held}; "
            "at least one class must be held out and one kept"
        )
    return np.sort(np.random.default_rng(config.seed).permutation(present)[:n_held])


def _named_classes(dataset: RetrievalDataset, present: np.ndarray, wanted: list[str | int]) -> np.ndarray:
    names = dataset.classes
    by_name = {str(names[int(c)]): int(c) for c in present} if names is not None else {}
    ids = []
    for item in wanted:
        if isinstance(item, int) and not isinstance(item, bool) and item in present:
            ids.append(item)
        elif str(item) in by_name:
            ids.append(by_name[str(item)])
        else:
            known = ", ".join(list(by_name)[:8]) if by_name else f"ids {int(present.min())}..{int(present.max())}"
            raise ConfigError(f"data.validation.classes: {item!r} is not a training class (known: {known}, ...)")
    if len(set(ids)) >= len(present):
        raise ConfigError("data.validation.classes: every training class is listed; keep at least one to train on")
    return np.array(sorted(set(ids)), dtype=np.int64)
