"""What one cohort training step costs against its members' standalone steps (demo data, CPU).

    .venv/bin/python -m benchmarks.cohort_step [--steps 12] [--rounds 3] [--backbone resnet10t]

A step here is everything the trainer does per batch: draw the batch (decode + augment), forward, loss,
backward and the optimiser updates, through the trainer's own loader and Updater. Measured side by side
in one process, interleaved round by round (A, B, C, … then again), median over rounds:

- each member trained alone (method: source, the cohort's base loss, its own data loading),
- the K = 2 cohort (method: mutual, RKD mutual loss) with shared views, with its own views per member,
  and with the default temporal diversity (τ = 1, 2); and the default cohort with the relaxed
  contrastive loss as its mutual loss.

The issue's goal: a cohort step costs at most 1.1 × the sum of the standalone steps. Writes
benchmarks/results/cohort_step.md and .json.
"""

from __future__ import annotations

import statistics
import time

from benchmarks import common
from benchmarks.common import parser, write_results
from metrictransfer.demo import DEMO_DATA

BASE = {"name": "triplet", "params": {"margin": 0.2}, "miner": "distance_weighted"}


def raw_config(backbone: str, method: str, mutual: dict | None = None) -> dict:
    raw = {
        "method": method,
        "data": DEMO_DATA,
        "model": {"backbone": backbone, "embedding_dim": 32, "normalize": True},
        "metric_loss": BASE,
        "optim": {"lr": 1e-3, "epochs": 10},
        "threads": 2,
    }
    if mutual is not None:
        raw["mutual"] = mutual
    return raw


class Stepper(common.Stepper):
    def __init__(self, raw: dict) -> None:
        super().__init__(raw, "cohort_step")

    def seconds_per_step(self, steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            self.step()
        return (time.perf_counter() - started) / steps


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--steps", type=int, default=12, help="timed steps per round and setting")
    options.add_argument("--rounds", type=int, default=3)
    options.add_argument("--backbone", default="resnet10t")
    args = options.parse_args()

    settings = {
        "member 0 alone": raw_config(args.backbone, "source"),
        "member 1 alone": {**raw_config(args.backbone, "source"), "seed": 1},
        "cohort, shared views, τ 1/1": raw_config(args.backbone, "mutual", {"members": 2, "view_diversity": False, "update_every": [1, 1]}),
        "cohort, own views, τ 1/1": raw_config(args.backbone, "mutual", {"members": 2, "update_every": [1, 1]}),
        "cohort, own views, τ 1/2 (default)": raw_config(args.backbone, "mutual", {"members": 2}),
        "cohort, relaxed contrastive mutual loss, τ 1/2": raw_config(
            args.backbone, "mutual", {"members": 2, "loss": {"name": "relaxed_contrastive"}}
        ),
    }
    steppers = {name: Stepper(raw) for name, raw in settings.items()}
    for stepper in steppers.values():  # warm-up: first batches, allocator, lazy initialisation
        for _ in range(2):
            stepper.step()
    times: dict[str, list[float]] = {name: [] for name in steppers}
    for round_ in range(args.rounds):
        for name, stepper in steppers.items():
            times[name].append(stepper.seconds_per_step(args.steps))
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {t[-1]:.3f}s" for n, t in times.items()), flush=True)

    median = {name: statistics.median(t) for name, t in times.items()}
    alone = median["member 0 alone"] + median["member 1 alone"]
    lines = [
        f"# Cohort step vs standalone steps (K = 2, {args.backbone} 32-d, demo data, batch 45 × 2 images × 2 views)",
        "",
        f"Median over {args.rounds} interleaved rounds of {args.steps} steps; a step includes loading the batch.",
        "",
        "| setting | seconds per step | ÷ sum of the members alone |",
        "|---|---:|---:|",
    ]
    for name, seconds in median.items():
        ratio = "" if name.endswith("alone") else f"{seconds / alone:.2f}"
        lines.append(f"| {name} | {seconds:.3f} | {ratio} |")
    lines += [
        "",
        f"Sum of the members alone: {alone:.3f} s per step. Goal: every cohort ratio ≤ 1.10.",
    ]
    rerun = f"cohort_step --steps {args.steps} --rounds {args.rounds} --backbone {args.backbone}"
    write_results("cohort_step", lines, {"args": vars(args), "seconds": times, "median": median}, rerun=rerun)


if __name__ == "__main__":
    main()
