"""Which faiss index a gallery gets, how it is built in chunks, and how well it answers.

Four kinds, by faiss's ``index_factory`` descriptions:

- ``flat``: exact search, 4·d bytes per vector; the default below :data:`FLAT_BELOW` items, where it answers
  a query in milliseconds anyway.
- ``ivf``: an inverted file of ``nlist`` clusters holding the vectors as they are (``IVF{nlist},Flat``):
  4·d + 8 bytes per vector, built in seconds, and items can be added and removed by id. The default when
  its vectors fit the memory budget.
- ``ivfpq``: the same clusters holding each vector as ``m`` 4-bit product-quantisation codes searched with
  faiss's fast-scan kernels (``IVF{nlist},PQ{m}x4fs``): m/2 + 8 bytes per vector, for catalogues that do
  not fit. Without an OPQ rotation: training one (and 8-bit codes) took 107 s (38 s) for 10^4 × 32 vectors
  on the 2 cores we measure on, against 4 s for these codes.
- ``hnsw``: a graph of 32 links per vector (``HNSW32``): 4·d + 256 bytes per vector (and its id), fast and
  accurate but slow to build on few cores, and faiss cannot remove items from it; chosen only when asked for.

The rules (after autofaiss's published ones, written here): ``nlist`` ≈ 4·√n rounded to a power of two,
trained on at most 64 vectors per cluster drawn at random; PQ's ``m`` is the largest even divisor of d
with m ≤ d/2 whose codes fit the budget. Every index is then measured against exact search on queries drawn from
the gallery itself (each query's own item left out of both answers): the smallest ``nprobe`` (``efSearch``
for HNSW) that reaches :data:`TARGET_RECALL` recall@10 becomes the index's default, and the recall it
measured is recorded with it. We write this rather than call autofaiss because autofaiss pins old faiss and
pyarrow versions and reads its input from files of its own layout.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metrictransfer.errors import ConfigError, MissingPackageError

KINDS = ("flat", "ivf", "ivfpq", "hnsw")
FLAT_BELOW = 50_000  # items: exact search is fast enough below this, and nothing to tune
TARGET_RECALL = 0.95  # recall@10 against exact search that the default nprobe / efSearch must reach
HNSW_LINKS = 32
TRAIN_PER_CLUSTER = 64  # faiss warns below 39 training points per cluster; more only slows training
REFINE_CANDIDATES = 100  # IVF-PQ: candidates taken from the codes and re-ranked with the stored vectors
MIN_PQ_ITEMS = 1_000  # below this the 16 centroids of each code train on too few vectors to mean anything
CHUNK = 65_536  # rows added per call: building never holds more than this many rows beyond the index itself


@dataclass
class IndexPlan:
    """What to build: the kind, its faiss description and parameters, and what a vector costs."""

    kind: str
    factory: str
    dim: int
    metric: str
    params: dict[str, int] = field(default_factory=dict)
    bytes_per_vector: float = 0.0
    refine: int | None = None  # candidates re-ranked by exact distance by default (IVF-PQ's coarse codes need it)


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as err:  # optional dependency
        raise MissingPackageError("approximate indexes need faiss: pip install faiss-cpu (or faiss-gpu)") from err
    return faiss


def clusters_for(count: int) -> int:
    """nlist: about 4·√n, a power of two, at least 16, and never more clusters than n / 39 (faiss needs
    that many training points per cluster)."""
    target = 4 * math.sqrt(max(count, 1))
    nlist = 2 ** round(math.log2(max(target, 16)))
    return int(max(1, min(nlist, count // 39)))


def pq_codes_for(dim: int, budget_per_vector: float) -> int:
    """PQ's m (4-bit codes): the largest even divisor of ``dim``, at most dim/2 and 128, whose m/2 + 8 bytes
    per vector fit the budget; the smallest one when none does."""
    divisors = [m for m in range(2, max(dim // 2, 2) + 1, 2) if dim % m == 0 and m <= 128] or [dim]
    fitting = [m for m in divisors if m / 2 + 8 <= budget_per_vector]
    return max(fitting) if fitting else min(divisors)


def plan_index(count: int, dim: int, metric: str = "euclidean", kind: str = "auto", memory_bytes: int | None = None) -> IndexPlan:
    """The index a gallery of ``count`` × ``dim`` vectors gets (``kind`` ``auto``: chosen by the rules above,
    within ``memory_bytes`` when given)."""
    if kind not in ("auto", *KINDS):
        raise ConfigError(f"--kind {kind}: unknown index kind; choose auto, {', '.join(KINDS)}")
    if count < 1 or dim < 1:
        raise ConfigError(f"an index needs at least one vector of at least one dimension, got {count} × {dim}")
    flat_bytes, ivf_bytes = 4.0 * dim, 4.0 * dim + 8
    budget = memory_bytes / count if memory_bytes else math.inf
    if kind == "auto":
        if count < FLAT_BELOW and flat_bytes <= budget:
            kind = "flat"
        elif ivf_bytes <= budget:
            kind = "ivf"
        else:
            kind = "ivfpq"
    if kind == "ivfpq" and count < MIN_PQ_ITEMS:
        raise ConfigError(f"--kind ivfpq needs at least {MIN_PQ_ITEMS} items to train its codes, got {count}; use flat or ivf")
    nlist = clusters_for(count)
    if kind == "flat":
        return IndexPlan("flat", "Flat", dim, metric, {}, flat_bytes)
    if kind == "hnsw":
        return IndexPlan(
            "hnsw", f"HNSW{HNSW_LINKS}", dim, metric, {"links": HNSW_LINKS, "ef_construction": 80}, flat_bytes + 8 * HNSW_LINKS
        )
    if kind == "ivf":
        return IndexPlan("ivf", f"IVF{nlist},Flat", dim, metric, {"nlist": nlist}, ivf_bytes)
    m = pq_codes_for(dim, budget)
    params = {"nlist": nlist, "m": m, "nbits": 4}
    return IndexPlan("ivfpq", f"IVF{nlist},PQ{m}x4fs", dim, metric, params, m / 2 + 8.0, refine=REFINE_CANDIDATES)


def _metric_type(faiss: Any, metric: str) -> int:
    return int(faiss.METRIC_L2 if metric == "euclidean" else faiss.METRIC_INNER_PRODUCT)


def train_sample(rows: Callable[[np.ndarray], np.ndarray], count: int, plan: IndexPlan, seed: int = 0) -> np.ndarray:
    """The vectors the quantisers train on: up to 64 per cluster (and 256 per PQ centroid), drawn at random
    and read by their row numbers, so that a memory-mapped table is never read whole."""
    nlist = plan.params.get("nlist", 0)
    wanted = max(TRAIN_PER_CLUSTER * nlist, 256 * 2 ** plan.params.get("nbits", 0) if "m" in plan.params else 0)
    take = min(count, max(wanted, 1))
    chosen = np.sort(np.random.default_rng(seed).choice(count, size=take, replace=False))
    return np.ascontiguousarray(rows(chosen), dtype=np.float32)


def chunks(count: int, size: int = CHUNK) -> Iterator[tuple[int, int]]:
    for start in range(0, count, size):
        yield start, min(count, start + size)


def build(plan: IndexPlan, rows: Callable[[np.ndarray], np.ndarray], count: int, seed: int = 0, ids: np.ndarray | None = None) -> Any:
    """A faiss index of ``plan`` holding rows 0..count-1 under ``ids`` (default 0..count-1); ``rows(indices)``
    reads rows (as stored: unit length already for cosine), so the gallery is added chunk by chunk."""
    faiss = _faiss()
    index = faiss.index_factory(plan.dim, plan.factory, _metric_type(faiss, plan.metric))
    if plan.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efConstruction = plan.params["ef_construction"]
    if plan.kind in ("flat", "hnsw"):
        index = faiss.IndexIDMap2(index)  # stable ids (inverted lists keep their own)
    if not index.is_trained:
        index.train(train_sample(rows, count, plan, seed))
    add_rows(index, rows, count, np.arange(count, dtype=np.int64) if ids is None else ids)
    return index


def add_rows(index: Any, rows: Callable[[np.ndarray], np.ndarray], count: int, ids: np.ndarray) -> None:
    """Add rows 0..count-1 to a trained index under ``ids``, a chunk at a time."""
    for start, stop in chunks(count):
        vectors = np.ascontiguousarray(rows(np.arange(start, stop)), dtype=np.float32)
        index.add_with_ids(vectors, np.ascontiguousarray(ids[start:stop], dtype=np.int64))


def trained_empty(plan: IndexPlan, rows: Callable[[np.ndarray], np.ndarray], count: int, seed: int = 0) -> Any:
    """An IVF index of ``plan`` with its quantisers trained on a sample of the rows and nothing added yet:
    what every shard of a sharded build starts from."""
    faiss = _faiss()
    if plan.kind not in ("ivf", "ivfpq"):
        raise ConfigError(f"only ivf and ivfpq indexes are built in shards, not {plan.kind}")
    index = faiss.index_factory(plan.dim, plan.factory, _metric_type(faiss, plan.metric))
    index.train(train_sample(rows, count, plan, seed))
    return index


@contextmanager
def quiet_stdout() -> Iterator[None]:
    """faiss's C++ code prints to the process's standard output as it opens and resizes on-disk lists,
    which would corrupt ``search --json``: file descriptor 1 points to /dev/null meanwhile."""
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def faiss_ivf(index: Any) -> Any:
    return _faiss().extract_index_ivf(index)


def merge_on_disk(empty: Any, lists: list[Any], ivfdata: Path, final_name: str) -> Any:
    """``empty`` (a trained IVF index) holding the entries of every inverted-lists object in ``lists``,
    written to the file ``ivfdata`` through faiss's on-disk inverted lists and memory-mapped from it. The
    index will look for the file as ``final_name`` beside its own file (``IO_FLAG_ONDISK_SAME_DIR``)."""
    faiss = _faiss()
    ivf = faiss.extract_index_ivf(empty)
    on_disk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(ivfdata))
    pointers = faiss.InvertedListsPtrVector()
    for lists_of_one in lists:
        pointers.push_back(lists_of_one)
    with quiet_stdout():
        total = on_disk.merge_from_multiple(pointers.data(), pointers.size(), False)
    on_disk.filename = str(ivfdata.parent / final_name)  # the name it is renamed to, as the index file records it
    ivf.replace_invlists(on_disk, True)
    on_disk.this.disown()  # the index owns it now
    empty.ntotal = ivf.ntotal = total
    return empty


def read_empty(path: Path) -> Any:
    """The IVF index in ``path`` with its trained quantisers and no items (its lists are not read):
    where an update of an index with on-disk lists starts its new generation."""
    faiss = _faiss()
    index = faiss.read_index(str(path), faiss.IO_FLAG_SKIP_IVF_DATA)
    ivf = faiss.extract_index_ivf(index)
    lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.replace_invlists(lists, True)
    lists.this.disown()  # the index owns it now
    index.ntotal = ivf.ntotal = 0
    return index


def read_on_disk(path: Path) -> Any:
    """An index whose inverted lists live in a ``.ivfdata`` file beside it, memory-mapped read-only: the
    previous generation's file is never written by an update."""
    faiss = _faiss()
    with quiet_stdout():
        return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)


def set_search_effort(index: Any, plan: IndexPlan, effort: int | None) -> None:
    """nprobe (clusters visited, IVF kinds) or efSearch (HNSW) for the next searches; flat has none."""
    if effort is None or plan.kind == "flat":
        return
    faiss = _faiss()
    if plan.kind == "hnsw":  # under the id map
        faiss.downcast_index(faiss.downcast_index(index).index).hnsw.efSearch = int(effort)
    else:
        faiss.extract_index_ivf(index).nprobe = int(min(effort, plan.params["nlist"]))


def search_parameters(index: Any, plan: IndexPlan, effort: int | None, selector: Any = None) -> Any:
    """faiss's per-search parameters: nprobe or efSearch (None: the one set on the index, its measured
    default) and an id filter. Given with each search rather than set on the shared index, so that
    concurrent searches cannot change each other's effort. Keep ``selector`` referenced until the search returns."""
    faiss = _faiss()
    params: Any
    if plan.kind in ("ivf", "ivfpq"):
        params = faiss.SearchParametersIVF()
        params.nprobe = int(min(effort, plan.params["nlist"])) if effort else int(faiss.extract_index_ivf(index).nprobe)
    elif plan.kind == "hnsw":
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(effort) if effort else int(faiss.downcast_index(faiss.downcast_index(index).index).hnsw.efSearch)
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    return params


def search(index: Any, queries: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` with per-search parameters. faiss.contrib.torch_utils (which pytorch-metric-learning
    imports) replaces ``search`` with a version that drops ``params``, keeping faiss's own as ``search_numpy``."""
    own = getattr(index, "search_numpy", index.search)
    return own(np.ascontiguousarray(queries, dtype=np.float32), k, params=params)  # type: ignore[no-any-return]


def recall_at(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of each query's exact k nearest items that ``found`` lists among its first k."""
    hits = [len(set(f[:k].tolist()) & set(e[:k].tolist())) for f, e in zip(found, exact)]
    return float(np.mean(hits)) / k


def held_out_queries(count: int, queries: int = 1000, seed: int = 1) -> np.ndarray:
    """Row numbers of the gallery items that measure an index, each searched without its own item."""
    return np.sort(np.random.default_rng(seed).choice(count, size=min(queries, count), replace=False))


def _without_self(neighbours: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Each row's neighbours with the query's own id removed, cut to k (-1 fills a row that came up short)."""
    out = np.full((len(neighbours), k), -1, dtype=np.int64)
    for i, (row, own) in enumerate(zip(neighbours, ids)):
        kept = row[(row != own) & (row >= 0)][:k]
        out[i, : len(kept)] = kept
    return out


def exact_neighbours(
    rows: Callable[[np.ndarray], np.ndarray], count: int, dim: int, metric: str, queries: np.ndarray, k: int
) -> np.ndarray:
    """The exact k nearest items of the query rows (themselves left out), the gallery streamed in chunks."""
    faiss = _faiss()
    q = np.ascontiguousarray(rows(queries), dtype=np.float32)
    best_scores = np.full((len(q), k + 1), np.inf if metric == "euclidean" else -np.inf, dtype=np.float32)
    best_ids = np.full((len(q), k + 1), -1, dtype=np.int64)
    for start, stop in chunks(count):
        flat = faiss.IndexFlatL2(dim) if metric == "euclidean" else faiss.IndexFlatIP(dim)
        flat.add(np.ascontiguousarray(rows(np.arange(start, stop)), dtype=np.float32))
        scores, ids = flat.search(q, min(k + 1, stop - start))
        scores_all = np.concatenate([best_scores, scores], axis=1)
        ids_all = np.concatenate([best_ids, np.where(ids >= 0, ids + start, -1)], axis=1)
        order = np.argsort(scores_all if metric == "euclidean" else -scores_all, axis=1, kind="stable")[:, : k + 1]
        best_scores = np.take_along_axis(scores_all, order, axis=1)
        best_ids = np.take_along_axis(ids_all, order, axis=1)
    return _without_self(best_ids, queries, k)


@dataclass
class Measured:
    """An index's answers against exact search, at the search effort it will use by default."""

    effort: int | None
    recall_at_1: float
    recall_at_10: float
    queries: int
    tried: list[dict[str, float]] = field(default_factory=list)
    refine: int | None = None


def rerank(
    q: np.ndarray, candidates: np.ndarray, rows: Callable[[np.ndarray], np.ndarray], k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of each query's candidate rows (-1: none) by exact distance: distances and rows, -1
    and inf where a query had fewer candidates. Reads only the candidates' rows."""
    out_d = np.full((len(q), k), np.inf, dtype=np.float64)
    out_r = np.full((len(q), k), -1, dtype=np.int64)
    for n, (query, found) in enumerate(zip(q, candidates)):
        found = np.unique(found[found >= 0])  # sorted: a memory-mapped table reads them in order
        if len(found) == 0:
            continue
        vectors = np.asarray(rows(found), dtype=np.float64)
        diff = vectors - query.astype(np.float64)
        distances = np.sqrt((diff**2).sum(1)) if metric == "euclidean" else 1.0 - vectors @ query.astype(np.float64)
        order = np.lexsort((found, distances))[:k]  # ties by row, as exact search breaks them
        out_d[n, : len(order)], out_r[n, : len(order)] = distances[order], found[order]
    return out_d, out_r


def measure(
    index: Any,
    plan: IndexPlan,
    rows: Callable[[np.ndarray], np.ndarray],
    count: int,
    queries: int = 1000,
    k: int = 10,
    ids: np.ndarray | None = None,
) -> Measured:
    """Recall@1 and recall@k of ``index`` against exact search on held-out gallery queries; for the
    approximate kinds, at the smallest nprobe / efSearch (doubling from 1, or from k for HNSW) that reaches
    :data:`TARGET_RECALL` recall@k, or the largest one tried. ``ids``: the index's id of each row, ascending
    (default: the row numbers)."""
    item_ids = ids
    ids = held_out_queries(count, queries)
    k = min(k, count - 1)
    if k < 1:
        return Measured(None, 1.0, 1.0, len(ids))
    exact = exact_neighbours(rows, count, plan.dim, plan.metric, ids, k)
    q = np.ascontiguousarray(rows(ids), dtype=np.float32)
    efforts: list[int | None]
    if plan.kind == "flat":
        efforts = [None]
    elif plan.kind == "hnsw":
        efforts = [max(k, 16) * 2**i for i in range(8)]
    else:
        efforts = [2**i for i in range(int(math.log2(plan.params["nlist"])) + 1)]
    tried: list[dict[str, float]] = []
    for effort in efforts:
        set_search_effort(index, plan, effort)
        _, found = index.search(q, max(k + 1, plan.refine or 0))
        if item_ids is not None:  # the index answers in item ids; exact search in row numbers
            found = np.where(found >= 0, np.searchsorted(item_ids, found), -1)
        if plan.refine:
            found = rerank(q, found, rows, k + 1, plan.metric)[1]
        found = _without_self(found, ids, k)
        at_1 = float(np.mean(found[:, 0] == exact[:, 0]))
        at_k = recall_at(found, exact, k)
        tried.append({"effort": float(effort or 0), "recall@1": at_1, f"recall@{k}": at_k})
        if at_k >= TARGET_RECALL:
            break
    set_search_effort(index, plan, efforts[len(tried) - 1])
    last = tried[-1]
    return Measured(efforts[len(tried) - 1], last["recall@1"], last[f"recall@{k}"], len(ids), tried, plan.refine)
