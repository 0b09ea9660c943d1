"""What reading the source's embeddings from a file costs in Recall@1 and saves in time (demo data).

    .venv/bin/python -m benchmarks.precomputed_source --source RUN_DIR [--seed 0] [--work runs/precomputed_source]

Side by side in one process, one after the other, with the demo's compression setting (ResNet-10t 32-d
target, relaxed contrastive loss, 10 epochs): the paper's protocol (the source embeds the same augmented
views at every step) against a table of the source's embeddings of the un-augmented training images
(``transfer.source_embeddings``, made once by ``embed``; its time is counted). ``--source`` is a trained
source run, e.g. runs/transfer_table/seed0/source. Writes benchmarks/results/precomputed_source.md and .json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks.common import parser, write_results
from metrictransfer.config import build_config
from metrictransfer.demo import DEMO_TARGET


def target(transfer: dict, seed: int) -> dict:
    raw = json.loads(json.dumps(DEMO_TARGET))
    raw.update({"method": "transfer", "seed": seed, "transfer": transfer, "threads": 2})
    raw["eval"] = {**raw["eval"], "every": 0}
    return raw


def main() -> None:
    from metrictransfer.engine.trainer import train
    from metrictransfer.evaluation.embeddings_file import save_embeddings
    from metrictransfer.evaluation.evaluate import embed_split
    from metrictransfer.runtime.checkpoint import load_embedding_model

    options = parser(__doc__)
    options.add_argument("--source", required=True, help="a trained source run folder")
    options.add_argument("--seed", type=int, default=0)
    options.add_argument("--work", default="runs/precomputed_source")
    args = options.parse_args()
    work = Path(args.work)

    started = time.perf_counter()
    online = train(build_config(target({"source_checkpoint": args.source}, args.seed)), work / "online", progress=False, overwrite=True)
    online_s = time.perf_counter() - started

    started = time.perf_counter()
    model, config = load_embedding_model(args.source)
    save_embeddings(work / "source_train.npz", embed_split(model, config, "train", "cpu"))
    embed_s = time.perf_counter() - started
    table = train(
        build_config(target({"source_embeddings": str(work / "source_train.npz")}, args.seed)),
        work / "table",
        progress=False,
        overwrite=True,
    )
    table_s = time.perf_counter() - started

    rows = [("source runs every step (paper)", online, online_s, 0.0), ("precomputed source table", table, table_s, embed_s)]
    lines = [
        "# Precomputed source embeddings vs the paper's protocol (demo compression setting, 10 epochs, 2 CPU threads)",
        "",
        "| source | R@1 | R@2 | total seconds (incl. embedding the training set) | of which embedding | time ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, result, seconds, embed in rows:
        f = result["final"]
        lines.append(
            f"| {label} | {100 * f['recall@1']:.1f} | {100 * f['recall@2']:.1f} | {seconds:.0f} | {embed:.0f} | {seconds / online_s:.2f} |"
        )
    lines += ["", f"Seed {args.seed}, source {args.source}."]
    record = {
        "args": vars(args),
        "online": {"seconds": online_s, **online["final"]},
        "table": {"seconds": table_s, "embed_seconds": embed_s, **table["final"]},
    }
    write_results("precomputed_source", lines, record, rerun=f"precomputed_source --source {args.source}")


if __name__ == "__main__":
    main()
