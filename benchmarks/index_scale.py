"""Index kinds at catalogue scale: build time, peak memory, bytes per vector, queries/s and recall against
exact search, for each kind of metrictransfer.retrieval.index_kinds on clustered synthetic embeddings.

    .venv/bin/python -m benchmarks.index_scale [--sizes 100000 1000000] [--dim 128] [--kinds flat ivf ivfpq hnsw]

The embeddings are SOP-like: many classes of a few items each, in super-classes, in fewer directions than
the embedding has (write_embeddings says why), L2-normalised, held in a memory-mapped .npy file that the
index reads in chunks, as `metrictransfer index` reads an embeddings table. Each (size, kind) runs in its
own process, so its peak resident memory is its own. The flat index's queries/s is the baseline: exact
search over the same vectors on the same cores. Writes benchmarks/results/index_scale.md and .json.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import environment, parser, write_results

QUERIES = 1000  # held-out gallery items searched, for queries/s and recall
GOAL = "at 10^6 × 128: recall@10 ≥ 0.95 at ≥ 10× the flat index's queries/s"


def write_embeddings(path: Path, count: int, dim: int, seed: int = 0, latent: int = 24) -> None:
    """count × dim float32 rows, unit length, written in chunks: classes of 4 items on average, grouped in
    super-classes of 250 classes (SOP's 12 super-classes hold 22,634 classes), in a ``latent``-dimensional
    space that a fixed random map spreads over ``dim`` dimensions, plus a little noise in all of them. A
    trained model's embeddings are like that: what separates products lies in far fewer directions than
    the embedding has. Isotropic noise in all 128 dimensions instead makes every neighbour after the
    class-mates a near tie, which no index can rank and no catalogue looks like."""
    rng = np.random.default_rng(seed)
    classes = max(count // 4, 1)
    supers = rng.normal(size=(max(classes // 250, 1), latent)).astype(np.float32)
    centres = supers[rng.integers(0, len(supers), classes)] + 0.5 * rng.normal(size=(classes, latent)).astype(np.float32)
    spread = rng.normal(size=(latent, dim)).astype(np.float32) / np.sqrt(latent)
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(count, dim))
    for start in range(0, count, 100_000):
        stop = min(count, start + 100_000)
        z = centres[rng.integers(0, classes, stop - start)] + 0.25 * rng.normal(size=(stop - start, latent)).astype(np.float32)
        x = z @ spread + 0.02 * rng.normal(size=(stop - start, dim)).astype(np.float32)
        rows[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    rows.flush()


def one_cell(path: Path, kind: str) -> dict:
    """Build, measure and time one kind on the table at ``path`` (run in a process of its own)."""
    import faiss

    from metrictransfer.retrieval import index_kinds

    rows = np.load(path, mmap_mode="r")
    count, dim = rows.shape
    plan = index_kinds.plan_index(count, dim, "euclidean", kind=kind)
    started = time.perf_counter()
    index = index_kinds.build(plan, lambda i: rows[i], count)
    build_seconds = time.perf_counter() - started
    measured = index_kinds.measure(index, plan, lambda i: rows[i], count, queries=QUERIES)
    queries = np.ascontiguousarray(rows[index_kinds.held_out_queries(count, QUERIES)])
    index.search(queries[:10], 11)  # warm
    started = time.perf_counter()
    _, found = index.search(queries, max(11, plan.refine or 0))
    if plan.refine:  # IVF-PQ's answer is its candidates re-ranked with the stored vectors: timed with it
        index_kinds.rerank(queries, found, lambda i: rows[i], 11, plan.metric)
    search_seconds = time.perf_counter() - started
    return {
        "kind": kind,
        "count": count,
        "dim": dim,
        "factory": plan.factory,
        "effort": measured.effort,
        "refine": plan.refine,
        "build_s": build_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "bytes_per_vector": len(faiss.serialize_index(index)) / count,
        "queries_per_s": len(queries) / search_seconds,
        "recall@1": measured.recall_at_1,
        "recall@10": measured.recall_at_10,
        "threads": faiss.omp_get_max_threads(),
    }


def main() -> int:
    options = parser(__doc__, name="index_scale")
    options.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    options.add_argument("--dim", type=int, default=128)
    options.add_argument("--kinds", nargs="+", default=["flat", "ivf", "ivfpq", "hnsw"])
    options.add_argument("--cell", nargs=2, metavar=("TABLE", "KIND"), help=argparse_suppress())
    args = options.parse_args()
    if args.cell:
        print(json.dumps(one_cell(Path(args.cell[0]), args.cell[1])))
        return 0
    cells = []
    with tempfile.TemporaryDirectory(prefix="index_scale-") as work:
        for count in args.sizes:
            table = Path(work) / f"embeddings-{count}.npy"
            write_embeddings(table, count, args.dim)
            for kind in args.kinds:
                command = [sys.executable, "-m", "benchmarks.index_scale", "--cell", str(table), kind]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    print(done.stderr[-2000:], file=sys.stderr)
                    cells.append({"kind": kind, "count": count, "dim": args.dim, "error": done.stderr.strip().splitlines()[-1:]})
                    continue
                cell = json.loads(done.stdout.strip().splitlines()[-1])
                cells.append(cell)
                print(json.dumps(cell), flush=True)
            table.unlink()
    flat_qps = {c["count"]: c["queries_per_s"] for c in cells if c.get("kind") == "flat" and "queries_per_s" in c}
    lines = [
        f"# Index kinds at scale: {args.dim}-d clustered embeddings, {QUERIES} held-out gallery queries, k = 10",
        "",
        f"Goal: {GOAL}. Recall is measured against exact search (each query's own item left out); the",
        "search effort (nprobe, efSearch) is the smallest that reached 0.95 recall@10, or the largest tried.",
        "",
        "| items | kind | faiss | effort | build s | peak RSS MB | bytes/vector | queries/s | × flat | recall@1 | recall@10 |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        if "error" in c:
            lines.append(f"| {c['count']:,} | {c['kind']} | failed: {' '.join(c['error'])} | | | | | | | | |")
            continue
        speedup = c["queries_per_s"] / flat_qps[c["count"]] if c["count"] in flat_qps else float("nan")
        refined = f" + refine {c['refine']}" if c.get("refine") else ""
        lines.append(
            f"| {c['count']:,} | {c['kind']} | `{c['factory']}`{refined} | {c['effort'] or '–'} | {c['build_s']:.1f} "
            f"| {c['peak_rss_mb']:.0f} | {c['bytes_per_vector']:.0f} | {c['queries_per_s']:,.0f} | {speedup:.1f} "
            f"| {c['recall@1']:.3f} | {c['recall@10']:.3f} |"
        )
    write_results(args.name, lines, {"cells": cells, "goal": GOAL}, rerun="index_scale " + " ".join(sys.argv[1:]), env=environment())
    return 0


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
