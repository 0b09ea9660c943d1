"""Index kinds (metrictransfer.retrieval.index_kinds): the rules that choose one, chunked building, and the
recall each measures against exact search."""

from __future__ import annotations

import numpy as np
import pytest

from metrictransfer.errors import ConfigError
from metrictransfer.retrieval import index_kinds
from metrictransfer.retrieval.index_kinds import build, exact_neighbours, measure, plan_index, recall_at

faiss = pytest.importorskip("faiss")


def clustered(count: int, dim: int, classes: int, seed: int = 0) -> np.ndarray:
    """SOP-like embeddings: a few items around each of many class centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    return centres[rng.integers(0, classes, count)] + 0.3 * rng.normal(size=(count, dim)).astype(np.float32)


def test_the_rules_choose_flat_for_small_galleries_ivf_when_it_fits_and_pq_when_it_does_not():
    """Catches a rule that sends a small gallery to an approximate index, or a large one past its budget."""
    assert plan_index(10_000, 128).kind == "flat"
    ivf = plan_index(1_000_000, 128)
    assert (ivf.kind, ivf.params["nlist"], ivf.bytes_per_vector) == ("ivf", 4096, 520.0)
    tight = plan_index(1_000_000, 128, memory_bytes=30 * 1_000_000)  # 30 bytes a vector
    assert tight.kind == "ivfpq" and tight.params["m"] == 32 and tight.factory == "IVF4096,PQ32x4fs"
    assert tight.bytes_per_vector <= 40
    assert plan_index(10_000_000, 128, memory_bytes=8 * 2**30).kind == "ivf"  # 10^7 × 520 bytes fit 8 GB
    assert plan_index(10_000_000, 128, memory_bytes=4 * 2**30).kind == "ivfpq"  # and do not fit 4 GB
    assert plan_index(200, 16, kind="ivf").params["nlist"] == 5  # never fewer than 39 training points per cluster
    with pytest.raises(ConfigError, match="--kind ivfflat: unknown index kind"):
        plan_index(10, 4, kind="ivfflat")


def test_exact_neighbours_streamed_in_chunks_equal_one_flat_search(monkeypatch):
    """Catches a merge of chunked results that loses or misorders neighbours across chunk borders."""
    x = clustered(3_000, 16, 100)
    monkeypatch.setattr(index_kinds, "CHUNK", 700)
    queries = np.arange(0, 3_000, 97)
    streamed = exact_neighbours(lambda i: x[i], len(x), 16, "euclidean", queries, 5)
    flat = faiss.IndexFlatL2(16)
    flat.add(x)
    _, whole = flat.search(x[queries], 6)
    expected = np.array([[n for n in row if n != q][:5] for row, q in zip(whole, queries)])
    assert (streamed == expected).all()


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq", "hnsw"])
def test_every_kind_answers_near_exact_search_at_its_tuned_effort(kind, monkeypatch):
    """Catches an index built from the wrong rows (ids shifted between chunks), a default search effort
    that was not set, or a recall that is reported rather than measured."""
    x = clustered(6_000, 32, 300)
    monkeypatch.setattr(index_kinds, "CHUNK", 2_500)  # three chunks
    plan = plan_index(len(x), 32, kind=kind)
    index = build(plan, lambda i: x[i], len(x))
    assert index.ntotal == len(x)
    measured = measure(index, plan, lambda i: x[i], len(x), queries=200)
    assert measured.recall_at_10 >= 0.95, measured  # IVF-PQ through its re-ranked candidates
    assert (measured.refine is not None) == (kind == "ivfpq")
    ids = index_kinds.held_out_queries(len(x), 200)
    _, found = index.search(x[ids], max(11, plan.refine or 0))  # searching again at the effort measure() left set
    if plan.refine:
        found = index_kinds.rerank(x[ids], found, lambda i: x[i], 11, "euclidean")[1]
    exact = exact_neighbours(lambda i: x[i], len(x), 32, "euclidean", ids, 10)
    assert recall_at(index_kinds._without_self(found, ids, 10), exact, 10) == pytest.approx(measured.recall_at_10)


def test_recall_at_k_counts_shared_items_not_their_order():
    found = np.array([[1, 2, 3], [4, 5, 6]])
    exact = np.array([[3, 2, 1], [4, 9, 8]])
    assert recall_at(found, exact, 3) == pytest.approx((3 / 3 + 1 / 3) / 2)


def test_rerank_orders_candidates_by_exact_distance_and_pads_short_rows():
    x = clustered(500, 8, 20)
    q = x[:2]
    candidates = np.array([[5, 3, 9, -1, 3], [-1, -1, -1, -1, -1]])
    distances, rows = index_kinds.rerank(q, candidates, lambda i: x[i], 3, "euclidean")
    expected = sorted((float(np.linalg.norm(x[r] - q[0])), r) for r in (3, 5, 9))
    assert list(rows[0]) == [r for _, r in expected] and distances[0] == pytest.approx([d for d, _ in expected])
    assert list(rows[1]) == [-1, -1, -1] and np.isinf(distances[1]).all()


def test_search_parameters_survive_faiss_torch_utils():
    """pytorch-metric-learning imports faiss.contrib.torch_utils, which replaces Index.search with a
    version that takes no params: every search of a gallery failed in a process that had trained."""
    pytest.importorskip("torch")
    import faiss.contrib.torch_utils  # noqa: F401

    x = clustered(400, 8, 20)
    plan = plan_index(len(x), 8, kind="ivf")
    index = build(plan, lambda i: x[i], len(x))
    params = index_kinds.search_parameters(index, plan, 2, faiss.IDSelectorRange(0, 100))
    _, found = index_kinds.search(index, x[:3], 5, params)
    assert ((found >= 0) & (found < 100)).all()
