"""Does the decoded-image cache change what the models learn? The demo's source and transfer, each way.

    .venv/bin/python -m benchmarks.cache_quality [--seeds 0 1] [--side 96] [--threads 2]

``data.cache: memory`` crops the training views from images shrunk to a short side of image_size × 256/224
instead of from the files' own pixels. Here the demo's glyphs are written as JPEG class folders at
``--side`` px (3× the training size, bicubic, quality 90: photos larger than the training size, as real
ones are), and the demo's source (ResNet-18-D, Proxy-Anchor, 16 epochs) and relaxed-contrastive transfer
(ResNet-10-T 32-d, 10 epochs) are trained on them with ``data.cache: none`` and, from a source trained with
the cache, with ``data.cache: memory``. The test split is read from the files either way. Writes
benchmarks/results/cache_quality.md and .json.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import parser, write_results


def write_glyph_folders(root: Path, side: int) -> tuple[list[str], list[str]]:
    """The demo's glyph splits as one JPEG folder per class; (train class names, test class names)."""
    from PIL import Image

    from metrictransfer.config import build_config
    from metrictransfer.data.registry import build_dataset

    data = build_config({"data": {"dataset": "glyphs"}}).data
    names: dict[str, list[str]] = {}
    for split in ("train", "test"):
        dataset = build_dataset(data, split)
        folders = [f"u{ord(c):05x}" for c in dataset.classes]  # file-system-safe class names
        names[split] = folders
        for i in range(len(dataset)):
            image, label = dataset[i]
            folder = root / folders[label]
            folder.mkdir(parents=True, exist_ok=True)
            image.resize((side, side), Image.Resampling.BICUBIC).save(folder / f"{i:05d}.jpg", quality=90)
    return names["train"], names["test"]


def main() -> int:
    options = parser(__doc__, name="cache_quality")
    options.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    options.add_argument("--side", type=int, default=96)
    options.add_argument("--threads", type=int, default=2)
    options.add_argument("--epochs-scale", type=float, default=1.0, help="shorten the runs (a quick check of this script)")
    args = options.parse_args()

    from metrictransfer.config import build_config, config_to_dict
    from metrictransfer.demo import demo_configs
    from metrictransfer.engine.trainer import train

    work = Path(tempfile.mkdtemp(prefix="cache_quality-"))
    runs = []
    try:
        train_classes, test_classes = write_glyph_folders(work / "glyphs", args.side)
        folder = {"dataset": "folder", "root": str(work / "glyphs"), "train_classes": train_classes, "test_classes": test_classes}
        for seed in args.seeds:
            for cache in ("none", "memory"):
                out = work / f"seed{seed}-{cache}"
                configs = demo_configs(out, seed=seed, epochs_scale=args.epochs_scale)
                row = {"seed": seed, "cache": cache}
                for name in ("source", "target_transfer"):
                    raw = config_to_dict(configs[name])
                    raw["data"].update({**folder, "cache": cache, "image_size": 32, "transform": "glyphs"})
                    raw["threads"] = args.threads
                    started = time.perf_counter()
                    results = train(build_config(raw, origin=f"cache_quality {name}"), out / name, progress=False)
                    row[f"{name}_recall@1"] = results["final"]["recall@1"]
                    row[f"{name}_seconds"] = round(time.perf_counter() - started, 1)
                runs.append(row)
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def summary(cache: str, key: str) -> str:
        values = [100 * r[key] for r in runs if r["cache"] == cache]
        spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.1f}{spread}"

    lines = [
        "# Decoded-image cache: what the models learn",
        "",
        f"The demo's glyphs as JPEG folders at {args.side} × {args.side} px, trained at 32 px; the demo's source and its "
        + f"relaxed-contrastive transfer, each way; seeds {', '.join(map(str, args.seeds))}; "
        + f"{args.threads} threads. Recall@1 on the test classes, read from the files (mean ± standard deviation).",
        "",
        "| data.cache | source R@1 | transfer R@1 (from the source trained the same way) |",
        "|---|---:|---:|",
    ]
    for cache in ("none", "memory"):
        lines.append(f"| {cache} | {summary(cache, 'source_recall@1')} | {summary(cache, 'target_transfer_recall@1')} |")
    lines += ["", "Each run:", "", "| seed | data.cache | source R@1 | transfer R@1 | source s | transfer s |"]
    lines.append("|---:|---|---:|---:|---:|---:|")
    for r in runs:
        lines.append(
            f"| {r['seed']} | {r['cache']} | {100 * r['source_recall@1']:.1f} | {100 * r['target_transfer_recall@1']:.1f} | "
            f"{r['source_seconds']:.0f} | {r['target_transfer_seconds']:.0f} |"
        )
    rerun = f"cache_quality --seeds {' '.join(map(str, args.seeds))}"
    write_results(args.name, lines, {"args": vars(args), "runs": runs}, rerun=rerun)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
