"""Every retrieval metric against an independent brute-force computation (full sort of every query)."""

import numpy as np
import pytest
import torch

from metrictransfer.evaluation import (
    compute_query_statistics,
    ensemble_embeddings,
    knn,
    nearest_positive_ranks,
    nmi_score,
    recall_at_k,
    retrieval_metrics,
    screened,
)


def _brute_force(x, labels, metric="euclidean", gallery=None, gallery_labels=None):
    """Per query: (R, rank of the first positive, AP@R, R-Precision), by sorting all its neighbours.

    Distances in float64; on ties, other-class items come first (ties count against the query).
    """
    same_set = gallery is None
    q = np.asarray(x, dtype=np.float64)
    g = q if same_set else np.asarray(gallery, dtype=np.float64)
    ql = np.asarray(labels)
    gl = ql if same_set else np.asarray(gallery_labels)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
    out = []
    for i in range(len(q)):
        if metric == "cosine":
            d = 1.0 - g @ q[i]
        else:
            d = ((g - q[i]) ** 2).sum(1)
        others = [j for j in range(len(g)) if not (same_set and j == i)]
        order = sorted(others, key=lambda j: (d[j], gl[j] == ql[i]))
        rel = np.array([gl[j] == ql[i] for j in order])
        r = int(rel.sum())
        if r == 0:
            out.append((0, -1, np.nan, np.nan))
            continue
        top = rel[:r]
        precision = np.cumsum(top) / np.arange(1, r + 1)
        out.append((r, int(np.argmax(rel)), float((precision * top).sum() / r), float(top.sum() / r)))
    return out


def _assert_stats_equal(stats, expected):
    r, rank, ap, rp = (np.array(v) for v in zip(*expected))
    assert stats.positives.tolist() == r.tolist()
    assert stats.rank.tolist() == rank.tolist()
    np.testing.assert_allclose(stats.average_precision.numpy(), ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.r_precision.numpy(), rp, rtol=0, atol=1e-12)


FOLD_PATHS = ["kernel", "kernel, 2 threads", "torch", "screened", "screened, 2 threads", "screened in float32", "screened in int8"]


@pytest.fixture(autouse=True, params=FOLD_PATHS)
def fold_path(request, monkeypatch):
    """Every test on the CPU's compiled kernel (one and two threads), on the torch path the GPU uses, and on
    the screened paths, bfloat16 and int8 (whatever this CPU's instructions: there they are slower, never wrong)
    and float32."""
    monkeypatch.setattr(knn, "FUSED_KERNEL_MIN_PAIRS", 2**62 if request.param == "torch" else 0)
    precision = {"screened": torch.bfloat16, "screened in float32": torch.float32, "screened in int8": torch.int8}.get(
        request.param.split(",")[0]
    )
    monkeypatch.setattr(knn, "screen_precision", lambda: precision)
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if "2 threads" in request.param else 1)
    yield request.param
    torch.set_num_threads(threads)


def _clustered(n=150, classes=12, dim=6, seed=0, spread=0.9):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return centers[labels] + spread * torch.randn(n, dim, generator=g), labels


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("block", [5, 16, 4096])
def test_all_vs_all_matches_brute_force(metric, block):
    x, labels = _clustered()
    labels[-1] = 99  # a class of one item: no positive
    labels[-2] = labels[-3] = 98  # a class of two
    stats = compute_query_statistics(x, labels, metric, block_size=block)
    _assert_stats_equal(stats, _brute_force(x, labels, metric))


@pytest.mark.parametrize("block", [3, 7, 1000])
def test_ties_match_brute_force(block):
    # Small integer coordinates: many exactly equal distances, computed exactly in float32.
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 3, (90, 3), generator=g).float()
    labels = torch.randint(0, 7, (90,), generator=g)
    stats = compute_query_statistics(x, labels, block_size=block)
    _assert_stats_equal(stats, _brute_force(x, labels))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("block", [4, 1000])
def test_query_vs_gallery_matches_brute_force(metric, block):
    x, labels = _clustered(n=160, classes=10, seed=2)
    is_query = torch.arange(160) % 3 == 0
    is_gallery = ~is_query
    is_gallery[labels == 9] = False  # class 9 has queries but nothing in the gallery: R = 0
    stats = compute_query_statistics(x, labels, metric, is_query=is_query, is_gallery=is_gallery, block_size=block)
    expected = _brute_force(x[is_query], labels[is_query], metric, x[is_gallery], labels[is_gallery])
    _assert_stats_equal(stats, expected)
    assert (stats.positives == 0).any()


def test_summary_leaves_out_queries_without_positives():
    x, labels = _clustered(n=60, classes=5, seed=3)
    labels[:4] = torch.tensor([50, 51, 52, 53])
    expected = [e for e in _brute_force(x, labels) if e[0] > 0]
    metrics = retrieval_metrics(x, labels, [1, 2, 4])
    for k in (1, 2, 4):
        assert metrics[f"recall@{k}"] == pytest.approx(np.mean([e[1] < k for e in expected]), abs=1e-12)
    assert metrics["map@r"] == pytest.approx(np.mean([e[2] for e in expected]), abs=1e-12)
    assert metrics["r_precision"] == pytest.approx(np.mean([e[3] for e in expected]), abs=1e-12)


def test_ties_count_against_the_query():
    x = torch.tensor([[0.0], [1.0], [1.0], [5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # query 0: its positive (item 1) ties with negative item 2; query 3: positive 2 ties with negative 1
    assert nearest_positive_ranks(x, labels).tolist() == [1, 1, 2, 1]
    assert recall_at_k(x, labels, [1, 2]) == {"recall@1": 0.0, "recall@2": 0.75}


def test_query_is_excluded_by_index_not_position():
    # Exact duplicates of different classes: a "skip the first neighbour" shortcut would get these wrong.
    x = torch.tensor([[0.0], [0.0], [10.0], [10.0]])
    assert recall_at_k(x, torch.tensor([0, 1, 0, 1]), [1])["recall@1"] == 0.0
    assert recall_at_k(x, torch.tensor([0, 0, 1, 1]), [1])["recall@1"] == 1.0


def test_blocks_bound_the_memory(monkeypatch, fold_path):
    """No distance matrix larger than a block (pass 2) or the same-class budget (pass 1) is ever built."""
    shapes = []
    module, name = (screened, "block_products") if "screened" in fold_path else (knn, "distances")
    original = getattr(module, name)

    def recording(*args, **kwargs):
        d = original(*args, **kwargs)
        shapes.append(d.shape)
        return d

    monkeypatch.setattr(module, name, recording)
    monkeypatch.setattr(knn, "_PAIR_BUDGET", 64)
    x, labels = _clustered(n=300, classes=4, seed=4)  # classes of ~75 items: pass 1 must split them
    compute_query_statistics(x, labels, block_size=32)
    assert max(s.numel() for s in shapes) <= 32 * 32
    assert len(shapes) > 30


def test_faiss_backend_agrees_with_blocked_engine():
    pytest.importorskip("faiss")
    x, labels = _clustered(n=200, classes=15, dim=8, seed=5)
    ours = retrieval_metrics(x, labels, [1, 2, 4, 8])
    theirs = retrieval_metrics(x, labels, [1, 2, 4, 8], backend="faiss")
    assert theirs == pytest.approx(ours, abs=1e-12)
    q = torch.arange(200) % 2 == 0
    ours = retrieval_metrics(x, labels, [1, 5], "cosine", is_query=q, is_gallery=~q)
    theirs = retrieval_metrics(x, labels, [1, 5], "cosine", is_query=q, is_gallery=~q, backend="faiss")
    assert theirs == pytest.approx(ours, abs=1e-6)


def test_matches_pytorch_metric_learning_accuracy_calculator():
    pytest.importorskip("faiss")
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    x, labels = _clustered(n=300, classes=20, dim=16, seed=6, spread=1.2)
    labels[-1] = 1000  # a lone query: pml leaves it out as well
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"), k="max_bin_count")
    theirs = calc.get_accuracy(x, labels)
    ours = retrieval_metrics(x, labels, [1])
    assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)


def test_nmi():
    x, labels = _clustered(n=120, classes=4, dim=8, seed=7, spread=0.01)
    assert nmi_score(x, labels) == pytest.approx(1.0)
    shuffled = labels[torch.randperm(120, generator=torch.Generator().manual_seed(0))]
    assert nmi_score(x, shuffled) < 0.3
    assert retrieval_metrics(x, labels, [1], nmi=True)["nmi"] == pytest.approx(1.0)


def test_ensemble_is_the_concatenation_of_normalised_embeddings():
    a, b = torch.randn(10, 4) * 3, torch.randn(10, 2) + 5
    joined = ensemble_embeddings([a, b])
    assert joined.shape == (10, 6)
    torch.testing.assert_close(joined[:, :4], a / a.norm(dim=1, keepdim=True))
    torch.testing.assert_close(joined[:, 4:], b / b.norm(dim=1, keepdim=True))
    with pytest.raises(ValueError, match="same items"):
        ensemble_embeddings([a, b[:5]])


@pytest.mark.parametrize(
    "embeddings, labels, kwargs, message",
    [
        (torch.randn(5, 3), torch.arange(4), {}, "mismatched lengths: 5 embeddings but 4 labels"),
        (torch.randn(1, 3), torch.arange(1), {}, "at least 2 items"),
        (torch.tensor([[0.0, float("nan")], [1, 1], [float("nan"), 0]]), torch.tensor([0, 0, 1]), {}, "2 rows hold NaN"),
        (torch.tensor([[0.0, float("inf")], [1, 1], [0, 0]]), torch.tensor([0, 0, 1]), {}, "1 rows hold an infinite"),
        (torch.randn(4, 3), torch.arange(4), {}, "every class has a single item"),
        (torch.randn(4), torch.arange(4), {}, "2-D array"),
        (torch.randn(4, 2), torch.zeros(4), {}, "labels must be integers"),
        (
            torch.randn(4, 2),
            torch.zeros(4, dtype=torch.long),
            {"is_query": torch.ones(4, dtype=torch.bool), "is_gallery": torch.ones(4, dtype=torch.bool)},
            "4 items are both query and gallery",
        ),
        (torch.randn(4, 2), torch.zeros(4, dtype=torch.long), {"is_query": torch.ones(4)}, "needs both is_query and is_gallery"),
        (torch.randn(4, 2), torch.zeros(4, dtype=torch.long), {"metric": "manhattan"}, "unknown metric 'manhattan'"),
    ],
)
def test_bad_input_is_named(embeddings, labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(embeddings, labels, [1], **kwargs)


def test_kernel_and_torch_paths_agree_at_default_blocks():
    """Many full spans of the kernel's vector test, two blocks, and the automatic choice of path."""
    x, labels = _clustered(n=2600, classes=300, dim=12, seed=8, spread=0.6)
    paths = [knn.query_statistics(x, labels, fused_kernel=fused, screen=False) for fused in (True, False, None)]
    for stats in paths[1:]:
        assert torch.equal(stats.rank, paths[0].rank)
        assert torch.equal(stats.average_precision.nan_to_num(), paths[0].average_precision.nan_to_num())
        assert torch.equal(stats.r_precision.nan_to_num(), paths[0].r_precision.nan_to_num())


def test_a_registered_retrieval_metric_is_reported_by_every_evaluation_and_kept_in_the_history():
    """One function adds a metric: retrieval_metrics reports it and the run's history keeps it."""
    from metrictransfer.engine.results import metrics_of
    from metrictransfer.registry import RETRIEVAL_METRICS, register_retrieval_metric

    saved = RETRIEVAL_METRICS.snapshot()
    try:

        @register_retrieval_metric("hit_rank_mean")
        def hit_rank_mean(stats):
            return float(stats.rank.double().mean())

        @register_retrieval_metric("precision", at_k=True)
        def precision_at(stats, k):
            return float((stats.rank < k).double().mean())  # stand-in: the test checks the wiring

        embeddings = torch.tensor([[0.0], [0.1], [5.0], [5.2], [9.0], [9.1]])
        labels = torch.tensor([0, 0, 1, 1, 2, 0])
        found = retrieval_metrics(embeddings, labels, ks=(1, 2))
        assert found["precision@2"] == found["recall@2"] and "precision@1" in found
        # other-class items closer than the first positive, for the 5 queries with one (the 9.0 has none)
        ranks = [0, 0, 0, 0, 3]
        assert found["hit_rank_mean"] == pytest.approx(sum(ranks) / 5)
        assert set(metrics_of({"epoch": 1, "loss": 0.5, **found})) == set(found)
    finally:
        RETRIEVAL_METRICS.restore(saved)
    assert "hit_rank_mean" not in retrieval_metrics(embeddings, labels, ks=(1,))


def test_a_far_common_offset_is_taken_out_before_the_float32_product():
    """Catches the cancellation of |x|² + |y|² - 2x·y: items near 1,000 in every coordinate, 0.05 apart,
    misordered in float32 unless the paths shift them by their mean first (all-vs-all and with a gallery)."""
    g = torch.Generator().manual_seed(2)
    x = 1000 + torch.randn(200, 8, generator=g).mul(0.05)
    labels = torch.randint(0, 20, (200,), generator=g)
    _assert_stats_equal(knn.query_statistics(x, labels, block_size=64), _brute_force(x, labels))
    is_query = torch.arange(200) % 2 == 0
    stats = knn.query_statistics(x[is_query], labels[is_query], x[~is_query], labels[~is_query], block_size=64)
    _assert_stats_equal(stats, _brute_force(x[is_query], labels[is_query], "euclidean", x[~is_query], labels[~is_query]))
