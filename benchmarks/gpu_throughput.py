"""Training throughput on one GPU: steps, the data loader and exact evaluation, at the paper's scale.

    .venv/bin/python -m benchmarks.gpu_throughput [--budget 300] [--steps 10] [--cudnn-benchmark]
    .venv/bin/python -m benchmarks.gpu_throughput --dry      # toy sizes on the CPU (CI: the script cannot rot)

1. Training steps on a preloaded synthetic batch (data loading left out), set up exactly as the trainer
   sets a run up (benchmarks/common.py DeviceStepper), 224 px, untrained weights (speed only):
   - source: ResNet-50 512-d, Proxy-Anchor (recipes/cub_source.yaml: 45 classes × 2 images × 2 views
     = 180 images per step); BN-Inception too (recipes/cub_source_bn_inception.yaml) when timm knows
     ``bn_inception`` after ``import metrictransfer.models``;
   - transfer: ResNet-50 512-d source (inference) → ResNet-18 128-d, relaxed contrastive
     (recipes/table1/cub_compression_relaxed_contrastive.yaml, 180 images per step);
   - cohort: two ResNet-50 512-d members (recipes/mutual/cub_mutual.yaml: 25 × 5 images, one view per
     member = 250 images per step), with ``mutual.update_every: [1, 1]`` (float16 refuses τ > 1);
   each × precision (32, bf16, 16) × channels_last (off, on) × compile (off, on; inductor). Every cell:
   warm-up steps, then ``--steps`` timed steps between ``torch.cuda.synchronize()`` calls. images/s
   counts images through the trained networks (views included), per second of whole training steps.
2. The data loader alone (the trainer's build_train_loader, pin_memory as in training) on a synthetic
   CUB tree of 5,900 training JPEGs of 500 × 375 with the paper's augmentation at 224 px, for 1, 2, 4,
   8 and 16 workers: decoded images per second (each gives 2 views).
3. Exact evaluation (metrictransfer.evaluation.retrieval_metrics, Recall@{1,10,100,1000}, MAP@R,
   R-Precision) of 60,502 × 512 clustered random embeddings (SOP's test split) on the GPU, twice (the
   first holds CUDA's start-up), and once on the CPU for the ratio and a check that both agree.

``torch.backends.cudnn.benchmark`` stays as the trainer leaves it (off) unless ``--cudnn-benchmark``.
Cells run in order of importance (eager steps, the source compiled in bf16 channels-last, evaluation,
loader, then the other compiled steps, whose first step compiles for a minute or more); a cell that
would start after ``--budget`` seconds (a compiled one: with less than ``--compile-reserve`` left) is
listed as not run. Within ``make gpu-check``'s 10 minutes only a few compiled cells fit; the whole grid
takes ``--budget 1800``. Writes benchmarks/results/gpu_throughput.md and .json. ``--dry`` runs every cell at toy sizes
on the CPU (32 px, 4 × 2 images, ResNet-10t for every model, 2 steps, 1–2 workers, 2,000 rows; three
eager cells per setting and one compiled cell, with torch.compile's eager backend; float16 is refused on
the CPU by the trainer's own check) and
writes gpu_throughput_dry.md/.json to a temporary folder (never over the real tables). Exit status 1
if any cell failed.
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.common import (
    DRY_RESULTS,
    RESULTS,
    ROOT,
    DeviceStepper,
    environment,
    parser,
    synchronize,
    timed_steps,
    write_cub_tree,
    write_results,
)
from benchmarks.evaluation_scale import make_data
from metrictransfer.errors import ConfigError

SOURCE, BN_INCEPTION = "recipes/cub_source.yaml", "recipes/cub_source_bn_inception.yaml"
PRECISIONS = ("32", "bf16", "16")
# compiled cells after the eager grid, most useful first: the fastest likely setting, then the default
COMPILE_ORDER = [("bf16", True), ("32", False), ("16", True), ("bf16", False), ("32", True), ("16", False)]
# a dry run takes one cell of each kind: every code path, not every combination
DRY_EAGER = [("32", False), ("bf16", True), ("16", False)]
DRY_NOTE = " (DRY RUN: toy sizes on the CPU, every model ResNet-10t; not a measurement)"


def recipe(path: str) -> dict:
    return yaml.safe_load((ROOT / path).read_text())


def settings(dry: bool, source_file: Path) -> dict[str, dict]:
    """The step settings: their recipes with untrained weights (no download); at toy sizes when dry."""
    import timm

    import metrictransfer.models  # noqa: F401  (registers the library's own timm models, if any)

    source = recipe(SOURCE)
    transfer = recipe("recipes/table1/cub_compression_relaxed_contrastive.yaml")
    transfer["transfer"]["source_checkpoint"] = str(source_file)
    cohort = recipe("recipes/mutual/cub_mutual.yaml")
    cohort["mutual"]["update_every"] = [1, 1]
    out = {
        "source ResNet-50 512-d, Proxy-Anchor": source,
        "transfer ResNet-50 → ResNet-18 128-d, relaxed contrastive": transfer,
        "cohort 2 × ResNet-50 512-d, RKD mutual": cohort,
    }
    if timm.is_model("bn_inception") and (ROOT / BN_INCEPTION).is_file():
        out["source BN-Inception 512-d, Proxy-Anchor"] = recipe(BN_INCEPTION)
    for raw in out.values():
        raw["model"] = {**raw["model"], "pretrained": False}
        raw.pop("name", None)
        if dry:
            raw["model"]["backbone"] = "resnet10t"
            raw["data"] = {**raw["data"], "image_size": 32, "classes_per_batch": 4, "images_per_class": 2}
    return out


def save_source(path: Path, dry: bool) -> Path:
    """An untrained source checkpoint of recipes/cub_source.yaml's model (ResNet-10t when dry): speed
    does not depend on weights, and none are downloaded."""
    from metrictransfer.config import build_config
    from metrictransfer.methods.base import build_model
    from metrictransfer.runtime.checkpoint import save_embedding_model

    raw = recipe(SOURCE)
    raw.pop("name", None)
    raw["model"] = {**raw["model"], "pretrained": False, **({"backbone": "resnet10t"} if dry else {})}
    config = build_config(raw, origin="gpu_throughput source")
    return save_embedding_model(build_model(config.model), config, path)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def step_cell(raw: dict, device: torch.device, args) -> dict:
    """One cell of the step grid: seconds per step, images/s, the first step's seconds, peak memory."""
    backend = "eager" if args.dry else None
    try:
        stepper = DeviceStepper(raw, device, num_classes=100, train_size=5864, compile_backend=backend, origin="gpu_throughput")
    except ConfigError as err:  # the trainer's own refusal (float16 on a CPU)
        return {"status": "refused", "note": str(err).split(";")[0]}
    losses: list[float] = []
    first, seconds = timed_steps(lambda: losses.append(stepper.step()), args.warmup, args.steps, device)
    data = stepper.config.data
    decoded = data.classes_per_batch * data.images_per_class  # images the loader decodes per step
    row = {
        "status": "ok",
        "rows": stepper.rows,
        "decoded": decoded,
        "decoded_per_s": decoded / seconds,
        "step_s": seconds,
        "images_per_s": stepper.rows / seconds,
        "first_step_s": first,
        "last_loss": losses[-1],
    }
    if device.type == "cuda":
        row["peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    if not all(np.isfinite(losses)):
        row.update(status="error", note=f"non-finite losses {losses}")
    return row


def loader_cell(tree: Path, workers: int, device: torch.device, args) -> dict:
    """Decoded images per second of the trainer's training loader with ``workers`` workers."""
    from metrictransfer.config import build_config
    from metrictransfer.data.registry import build_dataset
    from metrictransfer.engine.trainer import build_train_loader
    from metrictransfer.methods import METHODS

    raw = recipe(SOURCE)
    raw.pop("name", None)
    raw["data"] = {**raw["data"], "root": str(tree), "num_workers": workers, "image_size": args.size}
    raw["model"] = {"backbone": "resnet10t", "embedding_dim": 16}  # the loader does not use the model
    if args.dry:
        raw["data"].update(classes_per_batch=4, images_per_class=2)
    config = build_config(raw, origin="gpu_throughput loader")
    train_set = build_dataset(config.data, "train")
    method = METHODS["source"](config, 100)
    loader, batches = build_train_loader(config, method, train_set, device)

    def forever():
        epoch = 0
        while True:
            batches.start(epoch)
            yield from loader
            epoch += 1

    stream = forever()
    for _ in range(workers + 2):  # worker start-up and a full prefetch queue
        next(stream)
    images = views = count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < args.loader_seconds or count < 3:
        batch, _, _ = next(stream)
        images += batch.shape[0]
        views += batch.shape[0] * batch.shape[1]
        count += 1
    seconds = time.perf_counter() - started
    return {"status": "ok", "workers": workers, "batches": count, "images_per_s": images / seconds, "views_per_s": views / seconds}


def evaluation_cell(device: torch.device, n: int, args) -> dict:
    """Seconds of an exact all-vs-all evaluation of n × 512 embeddings on the device (twice) and on the CPU."""
    from metrictransfer.evaluation import retrieval_metrics

    ks = (1, 10, 100, 1000)
    with tempfile.TemporaryDirectory() as tmp:
        make_data(n, 512, Path(tmp) / "data.npz")
        with np.load(Path(tmp) / "data.npz") as data:
            x, y = torch.from_numpy(data["embeddings"]), torch.from_numpy(data["labels"])
    times, metrics = [], {}
    for _ in range(2):
        synchronize(device)
        started = time.perf_counter()
        metrics = retrieval_metrics(x.to(device), y.to(device), ks)
        synchronize(device)
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    cpu = retrieval_metrics(x, y, ks)
    cpu_seconds = time.perf_counter() - started
    return {
        "status": "ok",
        "n": n,
        "dim": 512,
        "device_s": times,
        "cpu_s": cpu_seconds,
        "metrics": metrics,
        "max_abs_diff_vs_cpu": max(abs(metrics[k] - cpu[k]) for k in cpu),
    }


def run_cell(name: str, fn, results: dict, started: float, args, device: torch.device, reserve: float = 0.0) -> None:
    """Run one cell unless the budget is spent; an exception marks the cell failed and the run goes on."""
    free(device)
    left = args.budget - (time.perf_counter() - started)
    if left < reserve:
        results[name] = {"status": "not run", "note": f"time budget ({left:.0f} s left)"}
        print(f"{name}: not run (budget)", flush=True)
        return
    cell_started = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as err:  # noqa: BLE001 — every failure is reported in the table, then the exit status
        first_line = (str(err).strip().splitlines() or [""])[0]
        results[name] = {"status": "error", "note": f"{type(err).__name__}: {first_line}"}
    results[name]["cell_s"] = round(time.perf_counter() - cell_started, 1)
    print(f"{name}: {json.dumps(results[name], default=str)}", flush=True)


def step_key(setting: str, precision: str, channels_last: bool, compile_: bool) -> str:
    return f"step|{setting}|{precision}|{'cl' if channels_last else 'nchw'}|{'compile' if compile_ else 'eager'}"


def main() -> int:
    options = parser(__doc__)
    options.add_argument("--dry", action="store_true", help="toy sizes on the CPU; results to a temporary folder")
    options.add_argument("--budget", type=float, default=300.0, help="seconds after which no further cell starts")
    options.add_argument("--steps", type=int, default=10, help="timed steps per cell")
    options.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first one is reported)")
    options.add_argument(
        "--compile-reserve", type=float, default=90.0, help="a compiled cell starts only with this many seconds of the budget left"
    )
    options.add_argument("--loader-seconds", type=float, default=4.0, help="timed seconds per worker count")
    options.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    options.add_argument("--eval-n", type=int, default=60502)
    options.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms (the trainer does not)")
    options.add_argument("--out", type=Path, help="results folder (default: benchmarks/results, or a temporary one when dry)")
    args = options.parse_args()
    if args.dry:
        args.steps, args.warmup, args.workers, args.eval_n = 2, 1, [1, 2], 2000
        args.loader_seconds, args.compile_reserve = 0.5, 0.0
        torch.set_num_threads(1)  # toy steps gain nothing from threads, and lose much on a shared CPU
    args.size = 32 if args.dry else 224
    if not args.dry and not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device here; run with --dry for the CPU toy run", file=sys.stderr)
        return 1
    device = torch.device("cpu" if args.dry else "cuda")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    out_dir = args.out or (DRY_RESULTS if args.dry else RESULTS)
    name = "gpu_throughput_dry" if args.dry else "gpu_throughput"

    started = time.perf_counter()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        grid = settings(args.dry, save_source(Path(tmp) / "source.pt", args.dry))

        def cell(raw: dict, precision: str, channels_last: bool, compile_: bool):
            changed = {**raw, "precision": precision, "channels_last": channels_last, "compile": compile_}
            return lambda: step_cell(changed, device, args)

        eager = DRY_EAGER if args.dry else [(p, cl) for p in PRECISIONS for cl in (False, True)]
        for setting, raw in grid.items():
            for precision, channels_last in eager:
                run_cell(
                    step_key(setting, precision, channels_last, False),
                    cell(raw, precision, channels_last, False),
                    results,
                    started,
                    args,
                    device,
                )
        compiled = [(setting, p, cl) for p, cl in COMPILE_ORDER for setting in grid]
        if args.dry:
            compiled = compiled[:1]

        def compiled_cell(setting: str, precision: str, channels_last: bool) -> None:
            run_cell(
                step_key(setting, precision, channels_last, True),
                cell(grid[setting], precision, channels_last, True),
                results,
                started,
                args,
                device,
                reserve=args.compile_reserve,
            )
            torch._dynamo.reset()  # drop the compiled graphs of models that are gone

        compiled_cell(*compiled[0])  # the likely fastest setting of the source, before the cheap sections
        run_cell("evaluation", lambda: evaluation_cell(device, args.eval_n, args), results, started, args, device)
        tree = Path(tmp) / "CUB_200_2011"
        size = (500, 375) if not args.dry else (125, 94)
        facts = write_cub_tree(tree, 59 if not args.dry else 4, 1, size=size)
        for workers in args.workers:
            run_cell(f"loader|{workers}", lambda w=workers: loader_cell(tree, w, device, args), results, started, args, device)
        for setting, precision, channels_last in compiled[1:]:
            compiled_cell(setting, precision, channels_last)
    total = time.perf_counter() - started

    env = environment(device)
    lines = report(results, grid, env, facts, args, total)
    record = {"args": vars(args), "environment": env, "tree": facts, "seconds": total, "cells": results}
    rerun = (
        "gpu_throughput"
        + (" --dry" if args.dry else "")
        + (" --cudnn-benchmark" if args.cudnn_benchmark else "")
        + f" --budget {args.budget:.0f}"
    )
    write_results(name, lines, record, rerun=rerun, out=out_dir)
    failed = [k for k, v in results.items() if v["status"] == "error"]
    if failed:
        print(f"gpu_throughput: {len(failed)} cell(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def report(results: dict, grid: dict, env: dict, facts: dict, args, total: float) -> list[str]:
    size = args.size
    lines = [
        f"# Training throughput{DRY_NOTE if args.dry else ''}: {env['device']}",
        "",
        f"torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, {env['cpu_cores']} CPU cores; "
        f"cudnn.benchmark {env['cudnn_benchmark']}, TF32 convolutions {env['tf32_conv']}, TF32 matmul {env['tf32_matmul']}. "
        f"{total:.0f} s in all (budget {args.budget:.0f} s).",
        "",
        f"## Training steps ({size} px, preloaded synthetic batch, untrained weights)",
        "",
        f"Mean of {args.steps} steps after {args.warmup} warm-up steps; images/s = images through the "
        "trained networks (views included) per second of whole steps (loss, backward, update).",
        "",
        "| setting | precision | channels-last | compile | images/step | ms/step | images/s | first step s | peak GB | status |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for setting in grid:
        for precision in PRECISIONS:
            for channels_last in (False, True):
                for compile_ in (False, True):
                    r = results.get(step_key(setting, precision, channels_last, compile_))
                    if r is None:  # not in this run's grid (a dry run takes a few cells)
                        continue
                    if r["status"] == "ok":
                        cells = [
                            f"{r['rows']}",
                            f"{1000 * r['step_s']:.1f}",
                            f"{r['images_per_s']:,.0f}",
                            f"{r['first_step_s']:.1f}",
                            f"{r['peak_gb']:.1f}" if "peak_gb" in r else "–",
                            "ok",
                        ]
                    else:
                        cells = ["", "", "", "", "", f"{r['status']}: {r.get('note', '')}"]
                    lines.append(
                        f"| {setting} | {precision} | {'on' if channels_last else 'off'} | "
                        f"{'on' if compile_ else 'off'} | " + " | ".join(cells) + " |"
                    )
    lines += [
        "",
        f"## Data loader ({facts['train_images']:,} synthetic JPEGs of {facts['size'][0]} × {facts['size'][1]}, "
        f"{facts['mean_jpeg_bytes'] / 1000:.0f} kB each; paper augmentation at {size} px, 2 views per image)",
        "",
        "| workers | decoded images/s | views/s | batches timed | status |",
        "|---:|---:|---:|---:|---|",
    ]
    for workers in args.workers:
        r = results.get(f"loader|{workers}", {"status": "not run"})
        if r["status"] == "ok":
            lines.append(f"| {workers} | {r['images_per_s']:,.0f} | {r['views_per_s']:,.0f} | {r['batches']} | ok |")
        else:
            lines.append(f"| {workers} | | | | {r['status']}: {r.get('note', '')} |")
    loader = {r["workers"]: r["images_per_s"] for k, r in results.items() if k.startswith("loader|") and r["status"] == "ok"}
    if loader:
        lines += [
            "",
            "Does the loader keep up? Decoded images per second each setting's fastest step consumes, against the "
            "loader's best here (" + ", ".join(f"{w} workers: {v:,.0f}" for w, v in loader.items()) + "):",
            "",
        ]
        for setting in grid:
            cells = [(r["decoded_per_s"], k) for k, r in results.items() if k.startswith(f"step|{setting}|") and r["status"] == "ok"]
            if cells:
                need, key = max(cells)
                enough = [w for w, v in loader.items() if v >= need]
                verdict = f"{min(enough)} workers suffice" if enough else "more than any worker count here gives"
                lines.append(f"- {setting}: {need:,.0f} decoded images/s ({' '.join(key.split('|')[2:])}); {verdict}")
    r = results.get("evaluation", {"status": "not run"})
    lines += ["", "## Exact evaluation (all-vs-all, Recall@{1,10,100,1000}, MAP@R, R-Precision)", ""]
    if r["status"] == "ok":
        lines += [
            "| N × D | device first s | device second s | CPU s | R@1 | MAP@R | max abs diff vs CPU |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| {r['n']:,} × {r['dim']} | {r['device_s'][0]:.2f} | {r['device_s'][1]:.2f} | {r['cpu_s']:.1f} | "
            f"{100 * r['metrics']['recall@1']:.2f} | {100 * r['metrics']['map@r']:.2f} | {r['max_abs_diff_vs_cpu']:.1e} |",
        ]
    else:
        lines.append(f"{r['status']}: {r.get('note', '')}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
