"""Smoke run of a CUB Table 1 cell on one GPU: seconds per training step and the projected hours.

    .venv/bin/python -m benchmarks.gpu_smoke [--steps 200] [--skip 5] [--set KEY=VALUE ...]
    .venv/bin/python -m benchmarks.gpu_smoke --dry       # 3–4 steps at 32 px, ResNet-10t, on the CPU (CI)

Trains, with the real trainer (``metrictransfer.engine.trainer.train``, loader workers, evaluation and
checkpoint included), first ``recipes/cub_source.yaml`` and then, from that run's checkpoint,
``recipes/table1/cub_compression_relaxed_contrastive.yaml``, each for one epoch on a synthetic tree in
CUB-200-2011's layout (500 × 375 JPEGs, 200 classes; benchmarks/common.py write_cub_tree).

How the runs stop after ``--steps`` steps: the tree is sized so that ONE epoch of each recipe's own
sampler is at least ``--steps`` steps (about 180 training images per class for 200 steps), and the runs
are given ``optim.epochs=1``. So each run ends normally — evaluation of the test split and a checkpoint
included, which the transfer then uses as its source — with no signal, kill or patched loop. The
shorter cosine schedule does not change a step's cost.

Timing: the method's ``training_loss`` is wrapped to read the clock (after ``torch.cuda.synchronize()``)
at the start of each step; the gap between two starts is one whole step as training runs it (loading
the next batch, forward, loss, backward, update). The first ``--skip`` steps (start-up, cuDNN) are left
out. The projection multiplies the mean by the steps per epoch that the recipe's sampler gives on
CUB's real training split (5,864 images in 100 classes, 58–59 per class assumed) and by the recipe's
epochs; the evaluation after each epoch is estimated from this run's epoch end (scaled to CUB's 5,924
test images) and shown apart.

``model.pretrained=false`` is set for both runs: pretrained weights would be downloaded, and they do
not change the speed. ``data.num_workers`` is the recipe's (8), or the machine's cores if fewer. The
losses and Recall@K of these runs mean nothing (random pictures). Writes benchmarks/results/gpu_smoke.md
and .json; ``--dry`` writes gpu_smoke_dry.md/.json to a temporary folder (never over the real ones).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import DRY_RESULTS, RESULTS, ROOT, environment, parser, synchronize, write_cub_tree, write_results
from metrictransfer.config import load_config
from metrictransfer.data.sampler import ClassBalancedBatchSampler, ShuffledBatchSampler
from metrictransfer.engine import trainer

SOURCE = "recipes/cub_source.yaml"
TRANSFER = "recipes/table1/cub_compression_relaxed_contrastive.yaml"
CUB_TRAIN, CUB_TEST, CUB_CLASSES = 5864, 5924, 100
DRY_NOTE = " (DRY RUN: toy sizes on the CPU, every model ResNet-10t; not a measurement)"


def steps_per_epoch(config, labels: np.ndarray) -> int:
    """Batches in one epoch of the trainer's sampler for this recipe on these training labels."""
    data = config.data
    batch = data.classes_per_batch * data.images_per_class
    if config.method == "transfer" and config.method_section["metric_weight"] == 0:  # label-free: shuffled batches
        return len(ShuffledBatchSampler(len(labels), batch))
    return len(ClassBalancedBatchSampler(labels, data.classes_per_batch, data.images_per_class))


def cub_labels() -> np.ndarray:
    """CUB's training split as the projection assumes it: 5,864 images spread evenly over 100 classes."""
    sizes = np.full(CUB_CLASSES, CUB_TRAIN // CUB_CLASSES)
    sizes[: CUB_TRAIN % CUB_CLASSES] += 1
    return np.repeat(np.arange(CUB_CLASSES), sizes)


def images_per_class_for(configs: list, steps: int) -> int:
    """The fewest training images per class for which one epoch of every recipe has ``steps`` steps."""
    n = 2
    while any(steps_per_epoch(c, np.repeat(np.arange(CUB_CLASSES), n)) < steps for c in configs):
        n += 1
    return n


def timed_run(config, out: Path) -> dict:
    """Train ``config`` into ``out`` and read the clock at the start of every step."""
    stamps: list[float] = []
    name = config.method
    real = trainer.METHODS[name]

    class Timed(real):
        def training_loss(self, images, labels, indices=None):
            synchronize(images.device)
            stamps.append(time.perf_counter())
            return super().training_loss(images, labels, indices)

    trainer.METHODS[name] = Timed
    started = time.perf_counter()
    try:
        results = trainer.train(config, out, progress=False)
    finally:
        trainer.METHODS[name] = real
    ended = time.perf_counter()
    return {"stamps": stamps, "started": started, "ended": ended, "results": results}


def summarize(run: dict, config, skip: int, test_images: int) -> dict:
    stamps = run["stamps"]
    gaps = np.diff(stamps)
    skip = min(skip, max(0, len(gaps) - 1))
    timed = gaps[skip:]
    mean = float(timed.mean())
    data = config.data
    rows = data.classes_per_batch * data.images_per_class * data.views
    per_epoch = steps_per_epoch(config, cub_labels())
    # after the last step's start: that step, then the epoch's evaluation, checkpoint and files
    epoch_end = max(0.0, run["ended"] - stamps[-1] - mean)
    every, epochs = config.eval.every, config.optim.epochs  # the trainer evaluates every N-th epoch and the last
    evaluations = 1 if every == 0 else epochs // every + (1 if epochs % every else 0)
    train_hours = mean * per_epoch * config.optim.epochs / 3600
    eval_hours = epoch_end * (CUB_TEST / test_images) * evaluations / 3600
    return {
        "steps_run": len(stamps),
        "steps_timed": len(timed),
        "skipped_first": skip,
        "first_step_s": float(gaps[0]) if len(gaps) else None,
        "mean_step_s": mean,
        "median_step_s": float(np.median(timed)),
        "p90_step_s": float(np.percentile(timed, 90)),
        "images_per_s": rows / mean,
        "images_per_step": rows,
        "startup_s": stamps[0] - run["started"],
        "epoch_end_s": epoch_end,
        "cub_steps_per_epoch": per_epoch,
        "epochs": config.optim.epochs,
        "evaluations": evaluations,
        "projected_train_hours": train_hours,
        "projected_eval_hours": eval_hours,
        "projected_hours": train_hours + eval_hours,
        "final": run["results"]["final"],
    }


def main() -> int:
    options = parser(__doc__)
    options.add_argument("--dry", action="store_true", help="3 steps at 32 px on the CPU; results to a temporary folder")
    options.add_argument("--steps", type=int, default=200, help="training steps per run (one epoch of the synthetic tree)")
    options.add_argument("--skip", type=int, default=5, help="first steps left out of the mean")
    options.add_argument("--test-per-class", type=int, default=10, help="test images per class (the epoch-end evaluation)")
    options.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another override for both runs, e.g. --set precision=bf16 (repeatable)",
    )
    options.add_argument("--out", type=Path, help="results folder (default: benchmarks/results, or a temporary one when dry)")
    args = options.parse_args()
    if args.dry:
        args.steps, args.skip, args.test_per_class = 3, 1, 2
    elif not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device here; run with --dry for the CPU toy run", file=sys.stderr)
        return 1
    device = "cpu" if args.dry else "cuda"
    size = 32 if args.dry else 224
    workers = min(8, os.cpu_count() or 1)
    out_dir = args.out or (DRY_RESULTS if args.dry else RESULTS)
    name = "gpu_smoke_dry" if args.dry else "gpu_smoke"

    common = [
        "model.pretrained=false",
        "optim.epochs=1",
        f"device={device}",
        f"data.image_size={size}",
        f"data.num_workers={workers}",
        *(["model.backbone=resnet10t", "threads=1"] if args.dry else []),
        *args.set,
    ]
    recipes = {
        "source": load_config(ROOT / SOURCE, [*common, "data.root=unused"]),
        "transfer": load_config(ROOT / TRANSFER, [*common, "data.root=unused"]),
    }
    # the projection uses the recipes as they would run (their epochs and evaluation interval, --set included)
    full = {
        key: load_config(ROOT / recipe, ["data.root=unused", *args.set]) for key, recipe in (("source", SOURCE), ("transfer", TRANSFER))
    }
    per_class = images_per_class_for(list(recipes.values()), args.steps)
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "CUB_200_2011"
        facts = write_cub_tree(tree, per_class, args.test_per_class, size=(125, 94) if args.dry else (500, 375))
        print(f"synthetic CUB tree: {facts}", flush=True)
        source_run = Path(tmp) / "source"
        for key, overrides in (("source", []), ("transfer", [f"transfer.source_checkpoint={source_run}"])):
            recipe = SOURCE if key == "source" else TRANSFER
            config = load_config(ROOT / recipe, [*common, f"data.root={tree}", *overrides])
            print(f"== {key}: {recipe}", flush=True)
            run = timed_run(config, Path(tmp) / key)
            rows[key] = {"recipe": recipe, **summarize(run, full[key], args.skip, facts["test_images"])}
            print(json.dumps(rows[key], default=str), flush=True)
    env = environment(device)
    record = {"args": vars(args), "environment": env, "tree": facts, "runs": rows}
    rerun = "gpu_smoke" + (" --dry" if args.dry else f" --steps {args.steps}") + "".join(f" --set {s}" for s in args.set)
    write_results(name, report(rows, env, facts, args), record, rerun=rerun, out=out_dir)
    return 0


def report(rows: dict, env: dict, facts: dict, args) -> list[str]:
    source, transfer = rows["source"], rows["transfer"]
    lines = [
        f"# Smoke run of a CUB Table 1 cell{DRY_NOTE if args.dry else ''}: {env['device']}",
        "",
        f"torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, {env['cpu_cores']} CPU cores; "
        f"synthetic CUB tree of {facts['train_images']:,} training JPEGs ({facts['size'][0]} × {facts['size'][1]}, "
        f"{facts['mean_jpeg_bytes'] / 1000:.0f} kB each) and {facts['test_images']:,} test JPEGs; "
        f"model.pretrained=false; extra overrides: {', '.join(args.set) or 'none'}.",
        "",
        "| run | recipe | steps timed | s/step (mean) | median | p90 | images/s | CUB steps/epoch | epochs | "
        "training h | evaluation h (est.) | total h |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, r in rows.items():
        lines.append(
            f"| {key} | `{r['recipe']}` | {r['steps_timed']} | {r['mean_step_s']:.3f} | {r['median_step_s']:.3f} | "
            f"{r['p90_step_s']:.3f} | {r['images_per_s']:,.0f} | {r['cub_steps_per_epoch']} | {r['epochs']} | "
            f"{r['projected_train_hours']:.2f} | {r['projected_eval_hours']:.2f} | {r['projected_hours']:.2f} |"
        )
    lines += [
        "",
        f"- One Table 1 cell (CUB, compression, relaxed contrastive) on this device: **{transfer['projected_hours']:.2f} h**, "
        f"after the CUB source it transfers from (once per dataset): **{source['projected_hours']:.2f} h**.",
        f"- Steps: each run's first {source['skipped_first']} steps left out; start-up before the first step "
        f"{source['startup_s']:.0f} s (source) and {transfer['startup_s']:.0f} s (transfer); epoch end "
        f"(evaluation of {facts['test_images']:,} test images, checkpoint) {source['epoch_end_s']:.1f} s and "
        f"{transfer['epoch_end_s']:.1f} s, scaled to CUB's {CUB_TEST:,} test images for the evaluation estimate.",
        "- CUB steps per epoch: the recipe's sampler on 5,864 training images in 100 classes of 58–59 "
        "(class-balanced for the source, shuffled batches for the label-free transfer).",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
