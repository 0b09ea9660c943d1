"""What checking an embeddings table on every read costs: ``read_table`` with the SHA-256 of every array
file verified (the default since tables record one per file) against the same read without, and against
the evaluation that reads the table (``metrictransfer evaluate --embeddings DIR``: exact Recall@K, MAP@R).

Each table holds N random float32 rows of D dimensions and N labels (100 classes), written by the same
functions ``metrictransfer embed`` uses. Times are medians of --repeats runs measured side by side in one
process, with the file in the page cache (a second read: what a user's repeated evaluations see); a first
read from a cold disk is bounded by the disk, for both.

    .venv/bin/python -m benchmarks.table_verify [--repeats 5]
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import median_seconds, parser, write_results
from metrictransfer.cli import main as cli
from metrictransfer.evaluation.embeddings_table import create_rows, finish_table, new_staging, open_rows, read_table

SIZES = [(20_000, 512), (100_000, 128)]  # (rows, dimensions); the evaluation runs on the first only


def write_table(out: Path, rows: int, dim: int) -> None:
    rng = np.random.default_rng(0)
    staging = new_staging(out)
    create_rows(staging, rows, dim, "float32")
    table = open_rows(staging)
    table[:] = rng.standard_normal((rows, dim), dtype=np.float32)
    table.flush()
    del table
    labels = rng.integers(0, 100, rows)
    items = np.array([f"item-{i}" for i in range(rows)])
    finish_table(staging, out, np.arange(rows), labels, items, {"dataset": "random", "split": "test", "metric": "euclidean"})


def evaluate(table: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli(["evaluate", "--embeddings", str(table), "--json"]) == 0


def main() -> None:
    options = parser(__doc__, name="table_verify")
    options.add_argument("--repeats", type=int, default=5)
    args = options.parse_args()

    work = Path(tempfile.mkdtemp(prefix="table_verify-"))
    lines = [
        "# Embeddings table: checking every file's SHA-256 on read",
        "",
        f"Medians of {args.repeats} runs; files in the page cache.",
        "",
        "| rows × dim | files MB | read, unchecked (s) | read, checked (s) | check MB/s | evaluate --embeddings (s) | check / evaluate |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows_seen: list[dict] = []
    try:
        for index, (rows, dim) in enumerate(SIZES):
            table = work / f"t{rows}x{dim}"
            write_table(table, rows, dim)
            megabytes = sum(p.stat().st_size for p in table.iterdir()) / 1e6
            read_table(table)  # into the page cache
            plain = median_seconds(lambda table=table: read_table(table, verify=False), args.repeats)
            checked = median_seconds(lambda table=table: read_table(table, verify=True), args.repeats)
            check = checked - plain
            evaluation = None
            if index == 0:
                evaluation = median_seconds(lambda table=table: evaluate(table), max(1, args.repeats // 2))
                shown = f"{evaluation:.2f} | {100 * check / evaluation:.1f} %"
            else:
                shown = "– | –"
            lines.append(f"| {rows:,} × {dim} | {megabytes:.0f} | {plain:.3f} | {checked:.3f} | {megabytes / check:.0f} | {shown} |")
            seconds = {"read": plain, "checked_read": checked, "evaluate": evaluation}
            rows_seen.append({"rows": rows, "dim": dim, "megabytes": megabytes, "seconds": seconds})
            print(lines[-1], flush=True)
            shutil.rmtree(table)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines += [
        "",
        "The check reads every byte of every array file once and hashes it; `evaluate --embeddings` reads the rows "
        "anyway and compares every query with every gallery row, so the check is a small share of it.",
    ]
    write_results(args.name, lines, {"args": vars(args), "rows": rows_seen}, rerun=f"table_verify --repeats {args.repeats}")


if __name__ == "__main__":
    main()
