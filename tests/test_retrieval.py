import numpy as np
import pytest
import torch

from metrictransfer.evaluation import nearest_positive_ranks, recall_at_k


def _brute_force_recall(x, labels, ks, metric):
    """Independent: full sort of every query's neighbours (query removed by index), pessimistic ties."""
    x = x.double()
    if metric == "cosine":
        x = x / x.norm(dim=1, keepdim=True)
        d = 1 - x @ x.t()
    else:
        d = torch.cdist(x, x)
    hits = {k: [] for k in ks}
    for i in range(len(x)):
        others = [j for j in range(len(x)) if j != i]
        if not any(labels[j] == labels[i] for j in others):
            continue
        # sort by distance, different-class before same-class on ties
        order = sorted(others, key=lambda j: (round(float(d[i, j]), 9), labels[j] == labels[i]))
        first_pos = next(r for r, j in enumerate(order) if labels[j] == labels[i])
        for k in ks:
            hits[k].append(first_pos < k)
    return {f"recall@{k}": float(np.mean(v)) for k, v in hits.items()}


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("chunk", [7, 1000])
def test_recall_matches_brute_force(metric, chunk):
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(12, 6, generator=g)
    labels = torch.randint(0, 12, (150,), generator=g)
    x = centers[labels] + 0.9 * torch.randn(150, 6, generator=g)
    labels[-1] = 99  # a class with a single item: no positive, left out
    ours = recall_at_k(x, labels, [1, 2, 4, 8, 16], metric=metric, chunk_size=chunk)
    expected = _brute_force_recall(x, labels.tolist(), [1, 2, 4, 8, 16], metric)
    assert ours == pytest.approx(expected, abs=1e-12)


def test_ties_count_against_the_query():
    x = torch.tensor([[0.0], [1.0], [1.0], [5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # query 0: its positive (item 1) ties with negative item 2; query 3: positive 2 ties with negative 1
    assert nearest_positive_ranks(x, labels).tolist() == [1, 1, 2, 1]
    assert recall_at_k(x, labels, [1, 2]) == {"recall@1": 0.0, "recall@2": 0.75}


def test_query_is_excluded_by_index_not_position():
    # Exact duplicates of different classes: a "skip the first neighbour" shortcut would get these wrong.
    x = torch.tensor([[0.0], [0.0], [10.0], [10.0]])
    labels = torch.tensor([0, 1, 0, 1])
    assert recall_at_k(x, labels, [1])["recall@1"] == 0.0
    labels = torch.tensor([0, 0, 1, 1])
    assert recall_at_k(x, labels, [1])["recall@1"] == 1.0
