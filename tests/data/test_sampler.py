import numpy as np
import pytest
import torch

from metrictransfer.data.multiview import MultiViewDataset, flatten_views
from metrictransfer.data.sampler import ClassBalancedBatchSampler


def _labels():
    rng = np.random.default_rng(0)
    return np.repeat(np.arange(30), rng.integers(1, 12, size=30))  # unequal classes, some of size 1


@pytest.mark.parametrize("p,k", [(5, 2), (8, 3), (30, 1)])
def test_batches_are_class_balanced(p, k):
    labels = _labels()
    sampler = ClassBalancedBatchSampler(labels, p, k, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        assert len(batch) == p * k
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == p and np.all(counts == k)


def test_epoch_covers_most_images_and_is_seeded():
    labels = _labels()
    sampler = ClassBalancedBatchSampler(labels, 5, 2, seed=1)
    seen = {i for b in sampler for i in b}
    assert len(seen) >= 0.7 * len(labels)
    again = ClassBalancedBatchSampler(labels, 5, 2, seed=1)
    assert list(again) == list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != list(again)


def test_too_few_classes_is_a_clear_error():
    fits = r"the largest batch that fits: .*data\.classes_per_batch=30 with data\.images_per_class=1"
    with pytest.raises(ValueError, match=r"classes_per_batch=40 distinct classes .* it has 30 classes.* " + fits):
        ClassBalancedBatchSampler(_labels(), 40, 2)


class _Toy(torch.utils.data.Dataset):
    labels = np.array([0, 0, 1, 1])

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.full((1, 2, 2), float(i)), int(self.labels[i])


def test_every_view_of_an_image_stays_in_the_batch():
    noise = lambda x: x + torch.rand(()) * 0.1  # noqa: E731 - independent per view
    data = MultiViewDataset(_Toy(), noise, views=3)
    loader = torch.utils.data.DataLoader(data, batch_sampler=ClassBalancedBatchSampler(_Toy.labels, 2, 2, seed=0))
    for views, labels, index in loader:
        images, flat_labels = flatten_views(views, labels)
        assert images.shape == (12, 1, 2, 2)
        # views of image b are rows 3b..3b+2: same image (value ~ index), different noise
        for b, i in enumerate(index.tolist()):
            block = images[3 * b : 3 * b + 3, 0, 0, 0]
            assert torch.all((block - i).abs() < 0.1) and len(set(block.tolist())) == 3
            assert torch.all(flat_labels[3 * b : 3 * b + 3] == _Toy.labels[i])


def test_shuffled_batches_are_distinct_images_and_repeat_with_the_seed():
    from metrictransfer.data.sampler import ShuffledBatchSampler

    sampler = ShuffledBatchSampler(23, 5, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == 20 and all(len(b) == 5 for b in batches)
    assert list(ShuffledBatchSampler(23, 5, seed=3)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
