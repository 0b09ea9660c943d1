"""A batch of training views made at once (the per-image steps per image, the elementwise tail once per
batch) is exactly what each item gives alone by the per-item definition."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from metrictransfer.data.multiview import MultiViewDataset, SeededItem, collate_readable, finish_views, item_seed
from metrictransfer.data.transforms import build_transform, split_per_batch

SIZE = 16


class _Images(torch.utils.data.Dataset):
    """Seven images of two sizes, the sixth unreadable (skipped: None)."""

    def __init__(self) -> None:
        self.reads = 0

    def __len__(self) -> int:
        return 7

    def __getitem__(self, i: int):
        self.reads += 1
        if i == 5:
            return None
        side = SIZE if i % 2 else 2 * SIZE
        pixels = np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8)
        return Image.fromarray(pixels), i % 3


def _by_definition(transforms, key: SeededItem, seed: int, views: int):
    """What a training item is: its views drawn one by one from the global stream seeded by (seed, epoch, index)."""
    item = _Images()[key.index]
    if item is None:
        return None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(item_seed(seed, key.epoch, key.index))
        return torch.stack([t(item[0]) for t in transforms for _ in range(views)])


TO_FLOAT = [v2.RGB(), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
PIPELINES = {
    "glyphs, two strengths": [build_transform("glyphs", True, SIZE), build_transform("glyphs", True, SIZE, strength=0.5)],
    "paper, bn_inception": [build_transform("paper", True, SIZE, "bn_inception")],
    "sizes kept (one tail per size)": [v2.Compose([*TO_FLOAT, v2.Normalize([0.5] * 3, [0.2] * 3)])],
    "a random tail (no batching)": [v2.Compose([*TO_FLOAT, v2.RandomHorizontalFlip()])],
}


@pytest.mark.parametrize("name", PIPELINES)
def test_a_batch_is_each_item_by_the_per_item_definition(name):
    transforms = PIPELINES[name]
    data = MultiViewDataset(_Images(), transforms, views=2, seed=7)
    keys = [SeededItem(i, 3) for i in range(7)]
    batch = data.__getitems__(keys)
    for key, item in zip(keys, batch):
        expected = _by_definition(transforms, key, seed=7, views=2)
        if expected is None:
            assert item is None
            continue
        assert torch.equal(item[0], expected), key
        assert item[1:] == (key.index % 3, key.index)
        assert torch.equal(data[key][0], expected)  # alone, too
    if name.startswith(("glyphs", "paper")):  # random crops of one output size
        assert not torch.equal(batch[0][0][0], batch[0][0][1])  # two views of an image differ
        assert not torch.equal(data[SeededItem(0, 4)][0], batch[0][0])  # and another epoch's
        views, labels, indices = collate_readable(batch)
        assert views.shape[:2] == (6, 2 * len(transforms)) and indices.tolist() == [0, 1, 2, 3, 4, 6]


@pytest.mark.parametrize("name", ["glyphs, two strengths", "paper, bn_inception"])
def test_uint8_views_finished_by_the_consumer_are_the_finished_views_bit_for_bit(name):
    """The training loader's views leave as uint8 and are finished on the device (Trainer.prepare_batch)."""
    transforms = PIPELINES[name]
    keys = [SeededItem(i, 2) for i in range(7)]
    finished = collate_readable(MultiViewDataset(_Images(), transforms, views=2, seed=5).__getitems__(keys))
    unfinished = MultiViewDataset(_Images(), transforms, views=2, seed=5, finish=False)
    views, labels, indices = collate_readable(unfinished.__getitems__(keys))
    assert views.dtype == torch.uint8 and views.shape == finished[0].shape
    tails = unfinished.unfinished_tails()
    assert tails is not None and len(tails) == len(transforms)
    assert torch.equal(finish_views(views, tails, 2), finished[0])
    assert torch.equal(labels, finished[1]) and torch.equal(indices, finished[2])
    assert MultiViewDataset(_Images(), transforms, views=2).unfinished_tails() is None  # finished items need nothing
    random_tail = MultiViewDataset(_Images(), PIPELINES["a random tail (no batching)"], finish=False)
    assert random_tail.unfinished_tails() is None and random_tail[0][0].dtype == torch.float32  # cannot split: finished


def test_a_pipeline_that_ends_in_uint8_splits_with_nothing_left_for_the_batch():
    head, tail = split_per_batch(v2.Compose([v2.RGB(), v2.Resize(SIZE), v2.CenterCrop(SIZE), v2.ToImage()]))
    pixels = head(_Images()[0][0])
    assert pixels.dtype == torch.uint8 and torch.equal(tail(pixels), pixels)


def test_only_elementwise_tails_are_split():
    assert split_per_batch(build_transform("glyphs", True, SIZE)) is not None
    assert split_per_batch(build_transform("paper", False, SIZE)) is not None
    assert split_per_batch(PIPELINES["a random tail (no batching)"][0]) is None
    assert split_per_batch(v2.Compose([v2.RGB(), v2.RandomResizedCrop(SIZE)])) is None  # never becomes a tensor
    assert split_per_batch(lambda image: image) is None


def test_a_seeded_batch_leaves_the_global_random_stream_alone():
    data = MultiViewDataset(_Images(), build_transform("glyphs", True, SIZE), views=2, seed=0)
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    data.__getitems__([SeededItem(i, 0) for i in range(4)])
    assert torch.equal(torch.rand(3), expected)
