"""Retrieval evaluation at SOP scale: our blocked engine against faiss, pytorch-metric-learning and a naive matrix.

    .venv/bin/python benchmarks/evaluation_scale.py [--n 60502] [--dim 512] [--naive-n 10000] [--threads 2]

Clustered random data shaped like SOP's test split (N = 60,502 items, 11,316 classes of 2 to 12 items,
unit-length 512-d embeddings). Every method runs in its own fresh process (so peak memory is its own),
on the same data, one after the other in this one run:

- ``ours``: ``metrictransfer.evaluation`` (all-vs-all, blocked, symmetric), Recall@{1,10,100,1000}, MAP@R,
  R-Precision.
- ``faiss-1001``: faiss IndexFlatL2 search of the 1,001 nearest neighbours (what generic tools do), metrics
  read off the lists.
- ``pml``: pytorch-metric-learning's AccuracyCalculator with ``k="max_bin_count"`` (Recall@1 and MAP@R
  only: it searches only as many neighbours as the largest class). Its default (``k=None``, every
  neighbour of every query) is not run: it would hold N × (N − 1) distances and indices.
- ``naive``: a full N × N distance matrix with every row sorted, at ``--naive-n`` items (where it fits),
  with ``ours`` and ``faiss-1001`` at that size beside it.

Writes benchmarks/results/evaluation_scale.md and .json: seconds, peak resident memory of the process,
the part of it above the process's memory after loading the data, and every metric.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
KS = (1, 10, 100, 1000)


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


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def worker(method: str, data_path: str, n: int, threads: int) -> dict:
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    with np.load(data_path) as data:
        x, y = data["embeddings"][:n], data["labels"][:n]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loaded = rss_mb()
    started = time.perf_counter()
    if method == "ours":
        from metrictransfer.evaluation import retrieval_metrics

        metrics = retrieval_metrics(xt, yt, KS)
    elif method == "faiss-1001":
        from metrictransfer.evaluation import retrieval_metrics

        metrics = retrieval_metrics(xt, yt, KS, backend="faiss")
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
    return {
        "method": method,
        "n": n,
        "seconds": round(seconds, 2),
        "peak_mb": round(peak_mb()),
        "above_loaded_mb": round(peak_mb() - loaded),
        "metrics": metrics,
    }


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


def run_worker(method: str, data_path: Path, n: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--data", str(data_path), "--n", str(n), "--threads", str(threads)]
    print(f"running {method} at N = {n:,}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60502)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--naive-n", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="evaluation_scale")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.data, args.n, args.threads)))
        return

    import faiss
    import pytorch_metric_learning
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "data.npz"
        make_data(args.n, args.dim, data_path)
        rows = [run_worker(m, data_path, args.n, args.threads) for m in ("ours", "faiss-1001", "pml")]
        rows += [run_worker(m, data_path, args.naive_n, args.threads) for m in ("ours", "faiss-1001", "naive")]

    pml_full_gb = args.n * (args.n - 1) * (4 + 8) / 1e9
    reference = {row["n"]: row["metrics"] for row in rows if row["method"] == "ours"}
    lines = [
        f"# Retrieval evaluation at scale: N = {args.n:,}, D = {args.dim}, {args.threads} CPU threads",
        "",
        f"Clustered random unit-length embeddings, SOP-like classes (2–12 items); all-vs-all. "
        f"{cpu_name()}, torch {torch.__version__}, faiss {faiss.__version__}, "
        f"pytorch-metric-learning {pytorch_metric_learning.__version__}. Each method in its own process; "
        "peak = the process's peak resident memory (Python, torch and the data included); "
        "above data = the part of the peak above the process's memory once the data was loaded.",
        "",
        "| method | N | seconds | time vs ours | peak MB | above data MB | "
        + " | ".join(f"R@{k}" for k in KS)
        + " | MAP@R | R-Prec | max abs diff vs ours |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * (len(KS) + 3),
    ]
    ours_seconds = {row["n"]: row["seconds"] for row in rows if row["method"] == "ours"}
    for row in rows:
        m = row["metrics"]
        cells = [f"{100 * m[f'recall@{k}']:.2f}" if f"recall@{k}" in m else "–" for k in KS]
        cells += [f"{100 * m[key]:.2f}" for key in ("map@r", "r_precision")]
        diff = max(abs(v - reference[row["n"]][k]) for k, v in m.items())
        lines.append(
            f"| {row['method']} | {row['n']:,} | {row['seconds']:.1f} | {row['seconds'] / ours_seconds[row['n']]:.2f}× "
            f"| {row['peak_mb']:,} | {row['above_loaded_mb']:,} | " + " | ".join(cells) + f" | {diff:.1e} |"
        )
    lines += [
        "",
        f"pytorch-metric-learning's default AccuracyCalculator (k=None: all N − 1 neighbours of every query) is not "
        f"run: its neighbour lists alone would take N × (N − 1) × (4 + 8) bytes = {pml_full_gb:.1f} GB at N = {args.n:,}. "
        'With k="max_bin_count" it searches only as many neighbours as the largest class, so it gives Recall@1 '
        "and MAP@R but not Recall@10 and beyond.",
        "",
        f"Rerun: `.venv/bin/python benchmarks/evaluation_scale.py --n {args.n} --dim {args.dim} --naive-n {args.naive_n} "
        f"--threads {args.threads}`",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
