"""An index of an embeddings table built through the command line by one process and by two torchrun
processes: wall time, the largest process's peak memory, and searching the result (its inverted lists
memory-mapped from faiss.ivfdata) for peak memory, queries/s and recall against exact search.

    .venv/bin/python -m benchmarks.index_sharded [--count 1000000] [--dim 128] [--kind ivf]

The table holds index_scale's clustered synthetic embeddings (SOP-like classes), written as `embed`
writes one, with the model record of a small checkpoint made here, so that `metrictransfer index
--images TABLE` accepts it. Every build and every search runs in a process of its own, so the peak
resident memory measured is that process's (for torchrun: the largest of its processes). On a 2-core
machine two processes share the same cores: the point measured is that sharding works and what each
process holds, not a speed-up, which needs more cores or machines. Writes
benchmarks/results/index_sharded.md and .json.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import environment, parser, write_results
from benchmarks.index_scale import write_embeddings

QUERIES = 1000


def write_table(folder: Path, count: int, dim: int, checkpoint: Path) -> None:
    """An embeddings table of ``count`` synthetic rows, recorded as embedded by ``checkpoint``'s model."""
    from metrictransfer.evaluation import embeddings_table
    from metrictransfer.evaluation.embedders import checkpoint_embedder

    record = checkpoint_embedder(checkpoint).record
    staging = embeddings_table.new_staging(folder)
    write_embeddings(staging / embeddings_table.EMBEDDINGS, count, dim)
    items = np.char.add("/catalogue/item-", np.arange(count).astype(str))
    items = np.char.add(items, ".jpg")
    meta = {"dataset": None, "split": None, "metric": "euclidean", "model": record, "classes": []}
    embeddings_table.finish_table(staging, folder, np.arange(count), np.full(count, -1), items, meta)


def make_checkpoint(path: Path, dim: int) -> Path:
    from metrictransfer.config import build_config
    from metrictransfer.models import EmbeddingModel
    from metrictransfer.runtime.checkpoint import save_embedding_model

    raw = {"model": {"backbone": "resnet10t", "embedding_dim": dim}, "data": {"image_size": 32}}
    return save_embedding_model(EmbeddingModel("resnet10t", dim), build_config(raw), path)


def measured_run(command: list[str]) -> dict:
    """Run ``command`` in a child of a process of its own; wall seconds and the peak RSS of the largest
    process of its tree (RUSAGE_CHILDREN of that intermediate process)."""
    probe = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter(); done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(json.dumps({'rc': done.returncode, 'seconds': time.perf_counter() - t, 'stdout': done.stdout[-2000:],"
        " 'stderr': done.stderr[-2000:], 'peak_rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["rc"] != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result['stderr']}")
    return result


def search_cell(index: Path) -> dict:
    """Load the index folder as `search` and `serve` do and time QUERIES searches of its own items."""
    from metrictransfer.retrieval import Gallery, index_kinds

    started = time.perf_counter()
    gallery = Gallery(index)
    load_seconds = time.perf_counter() - started
    rows = index_kinds.held_out_queries(gallery.count, QUERIES, seed=7)
    queries = np.asarray(gallery.vectors[rows])
    gallery.search_vectors(queries[:10], 10)  # warm
    seconds = []
    for _ in range(3):  # the best of three: one pass takes a fraction of a second on a shared machine
        started = time.perf_counter()
        found = gallery.search_vectors(queries, 11)
        seconds.append(time.perf_counter() - started)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before exact search reads every vector
    exact = index_kinds.exact_neighbours(lambda r: np.asarray(gallery.vectors[r]), gallery.count, gallery.dim, "euclidean", rows, 10)
    answered = np.array([[n.id for n in row if n.id != own][:10] for row, own in zip(found, gallery.ids[rows])])
    return {
        "load_s": load_seconds,
        "queries_per_s": QUERIES / min(seconds),
        "recall@10": index_kinds.recall_at(answered, gallery.ids[exact], 10),
        "nprobe": gallery.meta["faiss"]["effort"],
        "peak_rss_mb": peak_rss_mb,
        "index_file_mb": sum(p.stat().st_size for p in index.iterdir() if p.is_file()) / 2**20,
    }


def main() -> int:
    options = parser(__doc__, name="index_sharded")
    options.add_argument("--count", type=int, default=1_000_000)
    options.add_argument("--dim", type=int, default=128)
    options.add_argument("--kind", choices=["ivf", "ivfpq"], default="ivf")
    options.add_argument("--search", metavar="INDEX", help=argparse_suppress())
    args = options.parse_args()
    if args.search:
        print(json.dumps(search_cell(Path(args.search))))
        return 0
    cli = [sys.executable, "-m", "metrictransfer.cli"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "metrictransfer.cli"]
    cells = []
    with tempfile.TemporaryDirectory(prefix="index_sharded-") as work_dir:
        work = Path(work_dir)
        checkpoint = make_checkpoint(work / "model.pt", args.dim)
        started = time.perf_counter()
        write_table(work / "table", args.count, args.dim, checkpoint)
        table_seconds = time.perf_counter() - started
        for processes, launcher in ((1, cli), (2, torchrun)):
            out = work / f"index-{processes}"
            command = [*launcher, "index", "--checkpoint", str(checkpoint), "--images", str(work / "table"), "--out", str(out)]
            build = measured_run([*command, "--kind", args.kind])
            search = measured_run([sys.executable, "-m", "benchmarks.index_sharded", "--search", str(out)])
            cell = {"processes": processes, "build_s": build["seconds"], "build_peak_rss_mb": build["peak_rss_mb"]}
            cell |= {"search": json.loads(search["stdout"].strip().splitlines()[-1]), "printed": build["stdout"].strip()}
            cells.append(cell)
            print(json.dumps(cell), flush=True)
            shutil.rmtree(out)
    table_mb = args.count * args.dim * 4 / 2**20
    lines = [
        f"# An index of a {args.count:,} × {args.dim} embeddings table ({table_mb:,.0f} MB of vectors), built by 1 and by 2 processes",
        "",
        f"`metrictransfer index --images TABLE --kind {args.kind}` through the command line (start-up, the ONNX export",
        "of the query model and the recall measurement included), then the index loaded as `search` and `serve`",
        f"load it and searched for {QUERIES} of its own items (k = 10, each query's own item left out).",
        "",
        "| processes | build s | build peak RSS MB (largest process) | search load s | search peak RSS MB "
        "| queries/s | recall@10 | nprobe | index folder MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        s = c["search"]
        lines.append(
            f"| {c['processes']} | {c['build_s']:.0f} | {c['build_peak_rss_mb']:,.0f} | {s['load_s']:.1f} | {s['peak_rss_mb']:,.0f} "
            f"| {s['queries_per_s']:,.0f} | {s['recall@10']:.3f} | {s['nprobe']} | {s['index_file_mb']:,.0f} |"
        )
    lines += [
        "",
        f"Writing the table took {table_seconds:.0f} s. Threads per process: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.",
    ]
    record = {"cells": cells, "count": args.count, "dim": args.dim, "kind": args.kind, "table_s": table_seconds}
    write_results(args.name, lines, record, rerun="index_sharded " + " ".join(sys.argv[1:]), env=environment())
    return 0


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
