"""agreement@k: the share of each image's k nearest neighbours under the source that the target keeps."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from metrictransfer.evaluation import agreement
from metrictransfer.evaluation.agreement import nearest_neighbours, neighbour_agreement


def _brute_neighbours(x: np.ndarray, k: int, metric: str) -> list[list[int]]:
    """Plain Python: sort every other row by distance, ties by index."""
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = []
    for i in range(len(x)):
        d = [(float(-(x[i] @ x[j])) if metric == "cosine" else float(((x[i] - x[j]) ** 2).sum()), j) for j in range(len(x)) if j != i]
        out.append([j for _, j in sorted(d)[:k]])
    return out


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_neighbours_match_a_brute_force_sort_across_blocks(metric, monkeypatch):
    """Catches an image counted as its own neighbour, a block offset error, and an order that depends on the
    block size (the rows span three blocks of 7)."""
    monkeypatch.setattr(agreement, "BLOCK", 7)
    x = np.random.default_rng(0).normal(size=(20, 5)).astype(np.float64)
    assert nearest_neighbours(torch.from_numpy(x), 4, metric).tolist() == _brute_neighbours(x, 4, metric)


def test_agreement_matches_its_definition():
    """Catches a wrong denominator or set overlap: compared with the mean of |S_k(i) ∩ T_k(i)| / k over images."""
    rng = np.random.default_rng(1)
    source, target = rng.normal(size=(30, 6)), rng.normal(size=(30, 3))
    ours = neighbour_agreement(torch.from_numpy(target), torch.from_numpy(source), [1, 5], "euclidean", "cosine")
    for k in (1, 5):
        s, t = _brute_neighbours(source, k, "cosine"), _brute_neighbours(target, k, "euclidean")
        expected = np.mean([len(set(a) & set(b)) / k for a, b in zip(s, t)])
        assert ours[f"agreement@{k}"] == pytest.approx(expected, abs=1e-6)


def test_a_copy_agrees_fully_and_a_permutation_does_not():
    """Catches a score that ignores which rows are which: the source itself agrees at 1; the same embeddings
    assigned to other images agree only by chance."""
    x = torch.randn(200, 8, generator=torch.Generator().manual_seed(2))
    assert neighbour_agreement(x, x, [10], "cosine")["agreement@10"] == 1.0
    shuffled = x[torch.randperm(200, generator=torch.Generator().manual_seed(3))]
    assert neighbour_agreement(shuffled, x, [10], "cosine")["agreement@10"] < 0.2


def test_k_is_capped_at_the_other_images_and_bad_input_is_refused():
    """Catches k ≥ N silently returning garbage and embeddings of different images compared."""
    x = torch.randn(4, 3)
    assert neighbour_agreement(x, x, [10], "euclidean")["agreement@10"] == 1.0  # k = 3 there
    with pytest.raises(ValueError, match="same images"):
        neighbour_agreement(x, torch.randn(5, 3), [1], "euclidean")
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbours(x, 4, "euclidean")
    assert list(itertools.chain.from_iterable(nearest_neighbours(x, 3, "euclidean").tolist())).count(0) == 3
