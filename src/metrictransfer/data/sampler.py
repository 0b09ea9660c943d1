"""Class-balanced batch sampler: P classes × K images a batch."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from metrictransfer.data.multiview import SeededItem
from metrictransfer.errors import ConfigError, setting


def batch_misfit(classes_per_batch: int, images_per_class: int, sizes: Sequence[int] | np.ndarray) -> str:
    """The one-line message for a batch of P classes × K images that the training split (its classes'
    ``sizes``) cannot fill, with the largest batches that would fit."""
    sizes = np.asarray(sizes)
    sizes = sizes[sizes > 0]
    k = images_per_class
    fitting = int((sizes >= k).sum())
    smallest = int(sizes.min()) if len(sizes) else 0
    options = []
    if fitting >= 1:
        options.append(f"data.classes_per_batch={fitting} with data.images_per_class={k}")
    if smallest < k and smallest >= 1 and len(sizes) >= 1:
        options.append(f"data.classes_per_batch={len(sizes)} with data.images_per_class={smallest}")
    fits = f"the largest batch that fits: {' or '.join(options)}" if options else "no batch fits: the split is empty"
    return (
        f"a batch of data.classes_per_batch={classes_per_batch} distinct classes × data.images_per_class={k} "
        f"images does not fit the training split: it has {len(sizes)} classes, the smallest with {smallest} "
        f"images, {fitting} with at least {k}; {fits}"
    )


def check_batch_fits(classes_per_batch: int, images_per_class: int, labels: Sequence[int] | np.ndarray, by_class: bool = True) -> None:
    """Refuse, before any model is built, a batch that the training labels cannot fill: ``by_class``,
    ``classes_per_batch`` distinct classes that each have at least ``images_per_class`` images
    (unlabelled items, label -1, are not counted); else ``classes_per_batch`` × ``images_per_class``
    images drawn without looking at labels."""
    labels = np.asarray(labels)
    if not by_class:
        misfit = unlabelled_batch_misfit(classes_per_batch, images_per_class, len(labels))
        if misfit is not None:
            raise ConfigError(misfit)
        return
    labels = labels[labels >= 0]
    sizes = np.unique(labels, return_counts=True)[1]
    if int((sizes >= images_per_class).sum()) < classes_per_batch:
        raise ConfigError(batch_misfit(classes_per_batch, images_per_class, sizes))


def unlabelled_batch_misfit(classes_per_batch: int, images_per_class: int, items: int) -> str | None:
    """The one-line message for a batch drawn without labels (``classes_per_batch`` × ``images_per_class``
    images) that ``items`` training images cannot fill, with the largest batch that fits; None when it fits.
    A batch of one image is refused too: the label-free losses compare the images of a batch."""
    batch, k = classes_per_batch * images_per_class, images_per_class
    if 2 <= batch <= items:
        return None

    def size(p: int, k: int, joint: str) -> str:  # as the recipe (or the command: distill's --batch-size) sets it
        return setting("data.classes_per_batch", p) + (f"{joint}data.images_per_class={k}" if k > 1 or k != images_per_class else "")

    asked = f"a batch of {batch} image{'s' if batch > 1 else ''} ({size(classes_per_batch, k, ' × ')}; drawn without labels)"
    if batch < 2:
        return f"{asked} has nothing to compare its image with: the smallest batch that works is {size(2, 1, ' with ')}"
    if items < 2:
        return f"{asked} does not fit the training split's {items} image: no batch fits; add images"
    fits = size(items // k, k, " with ") if items // k * k >= 2 else size(items, 1, " with ")
    return f"{asked} does not fit the training split's {items} images; the largest batch that fits: {fits}"


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Yields batches of dataset indices: ``classes_per_batch`` distinct classes, ``images_per_class`` each.

    One epoch visits every image about once: each class's images are shuffled and cut into groups of K
    (a class with fewer than K images is filled by drawing again from the class), the groups are
    shuffled, and batches take P groups of distinct classes. Views are made later by the dataset
    wrapper, so every view of an image is always in the same batch. The order is a function of
    ``seed`` and the epoch (``set_epoch``), so runs repeat exactly.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        classes_per_batch: int,
        images_per_class: int,
        seed: int = 0,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ConfigError("labels must be a non-empty 1-D sequence of class ids")
        if classes_per_batch < 1 or images_per_class < 1:
            raise ConfigError(
                f"data.classes_per_batch and data.images_per_class must be >= 1, got {classes_per_batch} and {images_per_class}"
            )
        classes, inverse = np.unique(labels, return_inverse=True)
        if len(classes) < classes_per_batch:
            raise ConfigError(batch_misfit(classes_per_batch, images_per_class, np.bincount(inverse)))
        self.class_indices = [np.flatnonzero(inverse == c) for c in range(len(classes))]
        self.classes_per_batch = classes_per_batch
        self.images_per_class = images_per_class
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _groups(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
        k = self.images_per_class
        groups = []
        for c, idx in enumerate(self.class_indices):
            idx = rng.permutation(idx)
            for g in range(max(1, len(idx) // k)):
                group = idx[g * k : (g + 1) * k]
                if len(group) < k:  # class smaller than K: draw the rest again from the class
                    group = np.concatenate([group, rng.choice(idx, k - len(group), replace=True)])
                groups.append((c, group))
        return [groups[i] for i in rng.permutation(len(groups))]

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        pending = self._groups(rng)
        batches: list[list[int]] = []
        # Greedy fill: take the next groups whose class is not in the batch yet; leftovers are dropped.
        while len(pending) >= self.classes_per_batch:
            batch: list[int] = []
            used: set[int] = set()
            rest = []
            for c, group in pending:
                if len(used) < self.classes_per_batch and c not in used:
                    used.add(c)
                    batch.extend(int(i) for i in group)
                else:
                    rest.append((c, group))
            if len(used) < self.classes_per_batch:
                break
            batches.append(batch)
            pending = rest
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())


class ShuffledBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` distinct images in a fresh random order each epoch, for training without
    labels (self-supervised sources, label-free transfer). Deterministic in ``seed`` and the epoch; the
    last incomplete batch is dropped."""

    def __init__(self, num_items: int, batch_size: int, seed: int = 0) -> None:
        misfit = unlabelled_batch_misfit(batch_size, 1, num_items)  # the trainer checks P × K before (check_batch_fits)
        if misfit is not None:
            raise ConfigError(misfit)
        self.num_items, self.batch_size, self.seed, self.epoch = num_items, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_items)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield [int(i) for i in order[start : start + self.batch_size]]

    def __len__(self) -> int:
        return self.num_items // self.batch_size


class RankBatches(Sampler[list[SeededItem]]):
    """One training process's part of each global batch of ``batches`` (a batch sampler with
    ``set_epoch``), as :class:`SeededItem` keys.

    Rank r of N takes the r-th of N equal contiguous slices of every batch, so gathering the ranks'
    embeddings in rank order rebuilds the global batch in the order one process would see it.
    ``start(epoch, done)`` begins an epoch after its first ``done`` batches (a run resumed mid-epoch).
    """

    def __init__(self, batches: ClassBalancedBatchSampler | ShuffledBatchSampler, batch_size: int, rank: int = 0, world: int = 1) -> None:
        if batch_size % world:
            raise ConfigError(f"a batch of {batch_size} images cannot be split evenly over {world} processes")
        self.batches, self.rank, self.world = batches, rank, world
        self.part = batch_size // world
        self.epoch = self.done = 0

    def start(self, epoch: int, done: int = 0) -> None:
        self.batches.set_epoch(epoch)
        self.epoch, self.done = epoch, done

    def __iter__(self) -> Iterator[list[SeededItem]]:
        lo = self.rank * self.part
        for i, batch in enumerate(self.batches):
            if i >= self.done:
                yield [SeededItem(int(j), self.epoch) for j in batch[lo : lo + self.part]]

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.done)
