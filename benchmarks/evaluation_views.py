"""Seconds per evaluation of a CUB-sized test split: views decoded every time (before) against views kept.

    .venv/bin/python -m benchmarks.evaluation_views [--per-class 59] [--evaluations 3] [--workers 0 2] [--device cpu]

A synthetic CUB-200-2011 tree (benchmarks/common.py: 500 × 375 JPEGs, 59 test images in each of classes
101–200, 5,900 in all, about CUB's 5,924) is evaluated ``--evaluations`` times with the paper's test
transform (Resize 256, CenterCrop 224), by each way and each loader worker count, interleaved. The model is a
global average pool, so the table shows what the data side costs an evaluation (a GPU embeds CUB's test split
in about a second). The kept views' embeddings are checked equal to the fresh ones, bit for bit. Writes
benchmarks/results/evaluation_views.md and .json.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import environment, parser, synchronize, write_cub_tree, write_results


def main() -> int:
    options = parser(__doc__, name="evaluation_views")
    options.add_argument("--per-class", type=int, default=59, help="test images per class (100 classes)")
    options.add_argument("--evaluations", type=int, default=3)
    options.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    options.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    options.add_argument("--threads", type=int, default=2)
    args = options.parse_args()
    torch.set_num_threads(args.threads)

    from metrictransfer.config import build_config
    from metrictransfer.data.registry import build_dataset
    from metrictransfer.evaluation.embed import extract_embeddings
    from metrictransfer.evaluation.evaluate import with_test_transform
    from metrictransfer.evaluation.kept_views import keep_views

    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="evaluation_views-"))
    try:
        tree = write_cub_tree(work / "cub", train_per_class=1, test_per_class=args.per_class)
        data = build_config({"data": {"dataset": "cub", "root": tree["root"], "image_size": 224}}).data
        images = build_dataset(data, "test")
        model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).to(device)
        sets = {}
        for workers in args.workers:
            sets[("decoded every time", workers)] = with_test_transform(images, data)
            sets[("kept", workers)] = keep_views(with_test_transform(images, data), 16.0, say=print, name=f"test ({workers} workers)")
        seconds: dict[tuple[str, int], list[float]] = {key: [] for key in sets}
        outputs: dict[tuple[str, int], torch.Tensor] = {}
        for _ in range(args.evaluations):  # interleaved: each round times every way once
            for key, dataset in sets.items():
                synchronize(device)
                started = time.perf_counter()
                outputs[key] = extract_embeddings(model, dataset, 256, device, key[1])[0]
                synchronize(device)
                seconds[key].append(time.perf_counter() - started)
        reference = next(iter(outputs.values()))
        identical = all(torch.equal(out, reference) for out in outputs.values())
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = []
    for workers in args.workers:
        before, kept = seconds[("decoded every time", workers)], seconds[("kept", workers)]
        later_before, later_kept = statistics.median(before[1:] or before), statistics.median(kept[1:] or kept)
        rows.append(
            {
                "workers": workers,
                "before_first_s": round(before[0], 2),
                "before_later_s": round(later_before, 2),
                "kept_first_s": round(kept[0], 2),
                "kept_later_s": round(later_kept, 3),
                "speedup_later": round(later_before / later_kept, 1),
                "all_seconds": {"before": [round(s, 3) for s in before], "kept": [round(s, 3) for s in kept]},
            }
        )
    env = environment(device)
    facts = {"test_images": tree["test_images"], "jpeg": tree["size"], "mean_jpeg_bytes": tree["mean_jpeg_bytes"]}
    record = {"environment": env, "tree": facts, "rows": rows, "identical": identical}
    lines = [
        f"# Evaluation views kept: {env['device']}",
        "",
        f"{facts['test_images']:,} synthetic test JPEGs of {facts['jpeg'][0]} × {facts['jpeg'][1]} "
        f"({facts['mean_jpeg_bytes'] / 1e3:.0f} kB each), the paper's test transform at 224 px; "
        f"model: a global average pool (the data side alone); {args.threads} torch threads. "
        + f"Medians of evaluations 2–{args.evaluations}, the ways interleaved in each round.",
        "",
        "| loader workers | decoded every time: first s | later s | kept: first s | later s | later, before ÷ kept |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['before_first_s']:.2f} | {r['before_later_s']:.2f} | {r['kept_first_s']:.2f} | "
            f"{r['kept_later_s']:.3f} | **{r['speedup_later']:.0f}×** |"
        )
    lines += [
        "",
        f"- Embeddings of every way and every evaluation identical, bit for bit: **{'yes' if identical else 'NO'}**.",
        "- The first evaluation of the kept views decodes the split once, as before, and copies it into the store.",
    ]
    write_results(args.name, lines, record, rerun=f"evaluation_views{'' if args.device == 'cpu' else ' --device ' + args.device}")
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
