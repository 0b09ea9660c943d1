"""Retrieval evaluation at scale: our blocked engine against faiss's search alone, faiss with metrics,
pytorch-metric-learning, a naive matrix, and the bound (half a Gram matrix).

    .venv/bin/python -m benchmarks.evaluation_scale [--cases sop inshop catalogue naive] [--threads 2]

Clustered random unit-length embeddings with SOP-like classes (2 to 12 items). The cases:

- ``sop``: all-vs-all, N = 60,502 × 512 (SOP's test split).
- ``inshop``: query-vs-gallery, 14,218 queries × 12,612 gallery items, 512-d (In-Shop's test split).
- ``catalogue``: all-vs-all, N = 200,000 × 128 (a product catalogue).
- ``naive``: N = 10,000 × 512, where the textbook full matrix with sorted rows still fits.

Every method runs in its own fresh process (its peak memory is its own), one after the other in this run:

- ``ours, command line``: ``metrictransfer evaluate --embeddings FILE.npz --k 1,10,100,1000 --json`` in a
  process of its own, timed from its start to its exit (Python's and torch's start-up, reading the file
  and printing included): what a user waits for. Its peak memory is sampled every 50 ms.
  ``ours, command line, AVX2 only``: the same with every library of ours held to AVX2 (oneDNN, MKL, ATen's
  kernels and numba's compiled code), as on a Zen 2 or 3 or a Haswell CPU: the int8 screen with 63 levels.
- ``ours``: ``metrictransfer.evaluation.retrieval_metrics`` (Recall@{1,10,100,1000}, MAP@R, R-Precision).
  On an x86 CPU with AVX2, at this size, its blocks are screened by an int8 product of the items'
  quantisations and decided in float64 (``evaluation/screened.py``); ``ours, bfloat16 screen``: the screen
  over bfloat16 products; ``ours, float32 screen``: over float32 products (what other CPUs run);
  ``ours, float32 kernel``: float32 blocks folded by the compiled kernel (``screen=False``);
  ``ours, torch path``: float32 blocks folded with torch operations (what the GPU runs).
- ``faiss search k=1`` and ``faiss search k=1001``: an ``IndexFlatL2`` search alone, no metrics: k = 1 is
  about one full Gram pass; k = 1,001 is what a generic tool searches for Recall@1000.
- ``faiss k=1001 + metrics``: that search and the metrics read off its lists (``backend="faiss"``).
- ``pml``: pytorch-metric-learning's AccuracyCalculator with ``k="max_bin_count"`` (Recall@1, MAP@R and
  R-Precision only).
- ``half Gram``: torch's float32 matrix products over the blocks our engine computes (half the matrix in
  all-vs-all), nothing else: the bound for any exact method that reads every pair once in float32;
  ``half Gram, bfloat16`` and ``half Gram, int8``: the same products in bfloat16 and in int8, the bounds for
  the screened paths.
- ``naive``: the full distance matrix, every row sorted.

Every baseline runs at its best: each worker records the BLAS libraries and thread counts loaded in it
(threadpoolctl), and the baselines' workers run without OPENBLAS_CORETYPE, which some machines set and which
makes a current OpenBLAS pick a slower kernel (ours keeps the environment as it is).

Writes benchmarks/results/evaluation_scale.md and .json: seconds, the ratio to faiss's k = 1,001 search
alone, peak resident memory, the part above the process's memory once the data was loaded, every metric.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS, ROOT, parser, write_results

KS = (1, 10, 100, 1000)
# quick enough to run several times (medians, not one draw), in the order the SOP case runs them
QUICK = [
    "ours",
    "ours, command line",
    "ours, command line, AVX2 only",
    "ours, bfloat16 screen",
    "ours, float32 kernel",
    "ours, float32 screen",
    "ours, torch path",
    "half Gram",
    "half Gram, bfloat16",
    "half Gram, int8",
]
# every library of ours held to AVX2: a Zen 2 or 3, or a Haswell, as far as our code can tell
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "NUMBA_CPU_NAME": "haswell"}
REPEATED = set(QUICK)
SEARCHES = ["faiss search k=1", "faiss search k=1001"]
CASES = {  # name → (items, dimension, query count for query-vs-gallery or 0, methods)
    "sop": (60502, 512, 0, [*QUICK, *SEARCHES, "faiss k=1001 + metrics", "pml"]),
    "inshop": (26830, 512, 14218, ["ours", "ours, float32 kernel", "ours, torch path", "half Gram", *SEARCHES, "faiss k=1001 + metrics"]),
    "catalogue": (
        200000,
        128,
        0,
        ["ours", "ours, bfloat16 screen", "half Gram", "half Gram, bfloat16", "half Gram, int8", "faiss search k=1001"],
    ),
    "naive": (10000, 512, 0, ["ours", "faiss search k=1001", "naive"]),
}


def make_data(n: int, dim: int, path: Path, seed: int = 0, spread: float = 2.0) -> None:
    """SOP-like class sizes (2..12, mean 5.35) and clustered unit-length embeddings."""
    rng = np.random.default_rng(seed)
    classes = round(n / 5.35)
    sizes = 2 + rng.multinomial(n - 2 * classes, np.ones(classes) / classes)
    while sizes.max() > 12:  # move items from oversized classes to random ones below the cap
        big = np.flatnonzero(sizes > 12)
        sizes[big] -= 1
        sizes[rng.choice(np.flatnonzero(sizes < 12), len(big))] += 1
    labels = rng.permutation(np.repeat(np.arange(classes), sizes))
    centers = rng.standard_normal((classes, dim)).astype(np.float32)
    x = centers[labels] + spread * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.savez(path, embeddings=x, labels=labels.astype(np.int64))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    """This process's peak resident memory. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss
    over an exec, so a worker would inherit this script's own peak as its floor."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def blas_in_use() -> list[dict]:
    """The BLAS and OpenMP libraries loaded in this process, their versions, kernels and threads."""
    from threadpoolctl import threadpool_info

    keys = ("internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [{k: pool.get(k) for k in keys} | {"library": Path(pool["filepath"]).name} for pool in threadpool_info()]


def command_line(data_path: str, threads: int, extra_env: dict | None = None) -> dict:
    """``metrictransfer evaluate`` on the file, from its start to its exit, its peak memory sampled."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **(extra_env or {})}
    cmd = [sys.executable, "-m", "metrictransfer.cli", "evaluate", "--embeddings", data_path, "--k", "1,10,100,1000", "--json"]
    started = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0.0
    while process.poll() is None:
        try:
            with open(f"/proc/{process.pid}/status") as f:
                peak = max(peak, next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024)
        except (OSError, StopIteration):
            pass
        time.sleep(0.05)
    out, err = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"metrictransfer evaluate failed:\n{err}")
    metrics = {k: v for k, v in json.loads(out).items() if k.startswith("recall@") or k in ("map@r", "r_precision")}
    return {"seconds": seconds, "peak_mb": peak, "metrics": metrics}


def worker(method: str, data_path: str, queries: int, threads: int) -> dict:
    if method.startswith("ours, command line"):  # timed as a user waits for it: nothing loaded in this process first
        run = command_line(data_path, threads, AVX2_ONLY if method.endswith("AVX2 only") else None)
        return {
            "method": method,
            "seconds": round(run["seconds"], 2),
            "peak_mb": round(run["peak_mb"]),
            "above_loaded_mb": None,
            "metrics": run["metrics"],
            "blas": [],
        }
    import faiss

    faiss.omp_set_num_threads(threads)
    with np.load(data_path) as data:
        x, y = data["embeddings"], data["labels"]
    if method.startswith("faiss search"):  # faiss alone, at its best: no second OpenMP runtime (torch's) loaded
        return faiss_search_alone(method, x, queries)
    import torch

    torch.set_num_threads(threads)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    split: dict = {}
    if queries:
        is_query = np.zeros(len(x), dtype=bool)
        is_query[:queries] = True
        split = {"is_query": torch.from_numpy(is_query), "is_gallery": torch.from_numpy(~is_query)}
    q, g = (x[:queries], x[queries:]) if queries else (x, x)
    loaded = rss_mb()
    started = time.perf_counter()
    metrics: dict = {}
    if method in (
        "ours",
        "ours, bfloat16 screen",
        "ours, float32 kernel",
        "ours, float32 screen",
        "ours, torch path",
        "faiss k=1001 + metrics",
    ):
        from metrictransfer.evaluation import knn, retrieval_metrics

        if method == "ours, torch path":
            knn.FUSED_KERNEL_MIN_PAIRS = 2**62
        if method == "ours, float32 kernel":
            knn.screen_precision = lambda: None
        if method == "ours, float32 screen":
            knn.screen_precision = lambda: torch.float32
        if method == "ours, bfloat16 screen":
            knn.screen_precision = lambda: torch.bfloat16
        metrics = retrieval_metrics(xt, yt, KS, backend="faiss" if "faiss" in method else "torch", **split)
    elif method.startswith("half Gram"):
        metrics = {}
        if method.endswith("int8"):  # each item's quantisation, as the screen makes it
            from metrictransfer.evaluation.screened import _Operand

            rows = _Operand(torch.from_numpy(q), True, torch.int8)
            cols = rows if not queries else _Operand(torch.from_numpy(g), True, torch.int8)
            half_gram(rows.low, cols.low, same_set=not queries, right_t=cols.low_t)
        else:
            dtype = torch.bfloat16 if "bfloat16" in method else torch.float32
            half_gram(torch.from_numpy(q).to(dtype), torch.from_numpy(g).to(dtype), same_set=not queries)
    elif method == "pml":
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"), k="max_bin_count")
        got = calc.get_accuracy(xt, yt)
        metrics = {"recall@1": got["precision_at_1"], "map@r": got["mean_average_precision_at_r"], "r_precision": got["r_precision"]}
    elif method == "naive":
        metrics = naive_metrics(xt, yt)
    else:
        raise ValueError(method)
    seconds = time.perf_counter() - started
    return worker_row(method, seconds, loaded, metrics)


def faiss_search_alone(method: str, x: np.ndarray, queries: int) -> dict:
    """faiss's exact search alone, in a process where nothing but faiss and numpy is loaded."""
    import faiss

    q, g = (x[:queries], x[queries:]) if queries else (x, x)
    loaded = rss_mb()
    started = time.perf_counter()
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(g)
    index.search(q, int(method.split("k=")[1]) + (0 if queries else 1))  # all-vs-all: the query finds itself
    return worker_row(method, time.perf_counter() - started, loaded, {})


def worker_row(method: str, seconds: float, loaded: float, metrics: dict) -> dict:
    """A worker's result: its time, its memory, its metrics and the BLAS it ran on."""
    return {
        "method": method,
        "seconds": round(seconds, 2),
        "peak_mb": round(peak_mb()),
        "above_loaded_mb": round(peak_mb() - loaded),
        "metrics": metrics,
        "blas": blas_in_use(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
    }


def half_gram(q, g, same_set: bool, block: int = 2048, right_t=None) -> None:
    """The products of the blocks the engine computes (the upper triangle when all-vs-all), into one buffer
    (int8: as the screen computes them, from ``right_t``, the gallery's transposed copy)."""
    import torch

    from metrictransfer.evaluation.screened import block_products

    out = torch.empty(block, block, dtype=q.dtype)
    for r0 in range(0, len(q), block):
        for c0 in range(r0 if same_set else 0, len(g), block):
            a, b = q[r0 : r0 + block], g[c0 : c0 + block]
            if right_t is not None:
                block_products(a, b, right_t[:, c0 : c0 + block])
            else:
                torch.mm(a, b.t(), out=out[: len(a), : len(b)] if len(a) == block and len(b) == block else None)


def naive_metrics(x, y) -> dict:
    """The textbook way: the whole distance matrix, every row sorted."""
    import torch

    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    order = d.argsort(dim=1)
    del d
    relevant = y[order] == y.unsqueeze(1)
    relevant = relevant[:, :-1]  # the query itself, at infinite distance, sorts last
    r = relevant.sum(1)
    valid = r > 0
    first = relevant.float().argmax(1)
    out = {f"recall@{k}": float((first[valid] < k).double().mean()) for k in KS}
    r_max = int(r.max())
    top = relevant[:, :r_max].double()
    position = torch.arange(1, r_max + 1, dtype=torch.float64)
    within = position.unsqueeze(0) <= r.unsqueeze(1)
    precision = top.cumsum(1) / position
    out["map@r"] = float(((precision * top * within).sum(1)[valid] / r[valid]).mean())
    out["r_precision"] = float(((top * within).sum(1)[valid] / r[valid]).mean())
    return out


def blas_line(rows: list[dict]) -> str:
    """Which BLAS each method ran on (kernel set and threads), and OPENBLAS_CORETYPE where it was set."""
    used: dict[str, list[str]] = {}
    for row in rows:
        for pool in row.get("blas", []):
            if pool["internal_api"] != "openmp":
                name = f"{pool['internal_api']} {pool['version']} ({pool['architecture']} kernels, {pool['num_threads']} threads)"
                used.setdefault(name, []).append(row["method"])
    coretype = {row.get("openblas_coretype") for row in rows if "blas" in row and row["blas"]} - {None}
    parts = [f"{name}: {', '.join(dict.fromkeys(methods))}" for name, methods in used.items()]
    return "BLAS loaded (threadpoolctl) — " + "; ".join(parts) + (f". OPENBLAS_CORETYPE for ours: {coretype}" if coretype else ".")


def run_worker(method: str, data_path: Path, queries: int, threads: int) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.evaluation_scale", "--worker", method, "--data", str(data_path)]
    cmd += ["--queries", str(queries), "--threads", str(threads)]
    print(f"running {method}", file=sys.stderr, flush=True)
    env = dict(os.environ)
    if not method.startswith("ours"):  # a baseline at its best (see the module's docstring)
        env.pop("OPENBLAS_CORETYPE", None)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(methods: list[str], data_path: Path, queries: int, threads: int, repeats: int) -> list[dict]:
    """Every method once, in order; then the quick ones (``REPEATED``) again, round after round, interleaved:
    each of those reports the median of ``repeats`` runs (every run's seconds are kept in ``runs``)."""
    rows = [run_worker(m, data_path, queries, threads) for m in methods]
    quick = [row for row in rows if row["method"] in REPEATED]
    for row in quick:
        row["runs"] = [row["seconds"]]
    for _ in range(repeats - 1):
        for row in quick:
            row["runs"].append(run_worker(row["method"], data_path, queries, threads)["seconds"])
    for row in quick:
        row["seconds"] = statistics.median(row["runs"])
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return [{**row, "measured": stamp} for row in rows]


def main() -> None:
    options = parser(__doc__, name="evaluation_scale")
    options.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    options.add_argument("--threads", type=int, default=2)
    options.add_argument("--repeats", type=int, default=3, help="runs of each quick method (ours, torch path, half Gram): median")
    options.add_argument("--fresh", action="store_true", help="drop the cases of earlier invocations from the table")
    options.add_argument("--worker", help=argparse.SUPPRESS)
    options.add_argument("--data", help=argparse.SUPPRESS)
    options.add_argument("--queries", type=int, default=0, help=argparse.SUPPRESS)
    args = options.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.data, args.queries, args.threads)))
        return

    import faiss
    import pytorch_metric_learning

    results = {}
    earlier = RESULTS / f"{args.name}.json"
    if earlier.is_file() and not args.fresh:  # cases of an earlier invocation (another --cases) stay in the table
        results = {case: rows for case, rows in json.loads(earlier.read_text()).get("cases", {}).items() if case not in args.cases}
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            n, dim, queries, methods = CASES[case]
            data_path = Path(tmp) / f"{case}.npz"
            make_data(n, dim, data_path)
            print(f"== {case}: N = {n:,} × {dim}", file=sys.stderr, flush=True)
            results[case] = measure(methods, data_path, queries, args.threads, args.repeats)

    lines = [
        f"# Retrieval evaluation at scale, {args.threads} CPU threads",
        "",
        f"Clustered random unit-length embeddings, SOP-like classes (2–12 items). "
        f"faiss {faiss.__version__}, pytorch-metric-learning {pytorch_metric_learning.__version__}. Each method in its own "
        "process; peak = the process's peak resident memory (Python, torch and the data included); above data = the part "
        "of the peak above the process's memory once the data was loaded. Ratio = seconds ÷ faiss's k = 1,001 search alone "
        "in this run. Ours, the torch path and half Gram: the median of --repeats runs, interleaved (range in brackets). "
        "Metric cells: ours; `=` where a method's metrics equal ours exactly, the largest difference otherwise.",
    ]
    for case, rows in results.items():
        n, dim, queries, _ = CASES[case]
        shape = f"{queries:,} queries × {n - queries:,} gallery" if queries else f"all-vs-all, N = {n:,}"
        reference = next(row["metrics"] for row in rows if row["method"] == "ours")
        search = next((row["seconds"] for row in rows if row["method"] == "faiss search k=1001"), None)
        lines += [
            "",
            f"## {case}: {shape}, {dim}-d (measured {rows[0].get('measured', '?')})",
            "",
            "| method | seconds | ÷ faiss k=1001 search | peak MB | above data MB | metrics |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for row in rows:
            m = row["metrics"]
            if not m:
                cell = "none (search or products only)"
            elif row["method"] == "ours":
                cell = ", ".join(f"R@{k} {100 * m[f'recall@{k}']:.2f}" for k in KS)
                cell += f", MAP@R {100 * m['map@r']:.2f}, R-Prec {100 * m['r_precision']:.2f}"
            else:
                diff = max(abs(v - reference[k]) for k, v in m.items())
                cell = "=" if diff == 0 else f"max diff {diff:.1e}"
                cell += f" ({', '.join(k for k in m)})" if len(m) < len(reference) else ""
            ratio = f"{row['seconds'] / search:.2f}×" if search else "–"
            spread = f" ({min(row['runs']):.1f}–{max(row['runs']):.1f})" if len(row.get("runs", [])) > 1 else ""
            above = "–" if row.get("above_loaded_mb") is None else f"{row['above_loaded_mb']:,}"
            memory = f"{row['peak_mb']:,} | {above}"
            lines.append(f"| {row['method']} | {row['seconds']:.1f}{spread} | {ratio} | {memory} | {cell} |")
        lines += ["", blas_line(rows)]
    from metrictransfer.evaluation.screened import int8_levels, screen_precision

    precision = screen_precision()
    path = {
        "torch.int8": f"the int8-screened path ({int8_levels()} levels per side of zero)",
        "torch.bfloat16": "the bfloat16-screened path",
    }.get(str(precision), "the float32-screened path")
    lines += [
        "",
        f"On this CPU `ours`, at SOP's and the catalogue's sizes, ran {path}, decided in float64 (the float32 paths can "
        "differ from it only where two distances are within float32 rounding). Every case whose rows differ by date was "
        "measured in an earlier invocation.",
        "",
        "pytorch-metric-learning's default AccuracyCalculator (k=None: all N − 1 neighbours of every query) is not "
        f"run: its neighbour lists alone would take N × (N − 1) × (4 + 8) bytes = {60502 * 60501 * 12 / 1e9:.1f} GB at SOP's "
        'N = 60,502. With k="max_bin_count" it searches only as many neighbours as the largest class: Recall@1 and MAP@R, '
        "not Recall@10 and beyond. A case at a time keeps the others' rows.",
    ]
    rerun = f"evaluation_scale --cases {' '.join(results)} --threads {args.threads} --repeats {args.repeats}"
    write_results(args.name, lines, {"args": vars(args), "cases": results}, rerun=rerun)


if __name__ == "__main__":
    main()
