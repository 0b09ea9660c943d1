"""Diversified mutual metric learning at CPU scale: the ablation of the diversities, on the offline glyphs data.

    .venv/bin/python -m benchmarks.mutual_ablation [--seeds 0 1 2] [--epochs 10] [--work runs/mutual_ablation]
    .venv/bin/python -m benchmarks.mutual_ablation --tuned [--trials 6] [--trial-epochs 4]   # main rows tuned alike first

Every row is a cohort of ResNet-10t 32-d members (L2-normalised), trained from scratch with the default
base loss (triplet, margin 0.2, distance-weighted sampling) and the default mutual loss (RKD distance × 1 +
angle × 2, mean over peers, λ = 1). The rows switch the diversities on one at a time:

- independent: λ = 0; members differ by their initial weights (seed + k), otherwise trained alike;
- mutual, no diversity: λ = 1, same initial weights, τ = 1 for all, the same views;
- + model: each member its own initial weights (seed + k);
- + temporal: member k steps its optimiser every τ_k = k + 1 iterations;
- + view: each member its own augmentation of the same images;
- all three; and all three with K = 3.

Reported per row: Recall@1 of the members (their mean, and member 0, the one that steps every iteration)
and of the ensemble (concatenated L2-normalised embeddings), final epoch, held-out classes, mean ± std over
seeds. Nothing is selected on the test split. Finished runs are kept in ``--work`` and skipped when the
script runs again. Writes benchmarks/results/mutual_ablation.md and .json.
"""

from __future__ import annotations

import re
import statistics
import time
from pathlib import Path

from benchmarks.common import mean_std, parser, train_once, write_results
from metrictransfer.demo import DEMO_DATA
from metrictransfer.methods.mutual import ABLATION

ROWS = {  # label → settings of the mutual section (the package's ablation rows, shared with recipes/mutual/)
    "independent (λ = 0)": ABLATION["independent"],
    "mutual, no diversity": ABLATION["no_diversity"],
    "+ model": ABLATION["model"],
    "+ temporal": ABLATION["temporal"],
    "+ view": ABLATION["view"],
    "all three": ABLATION["all"],
    "all three, K = 3": {**ABLATION["all"], "members": 3, "update_every": [1, 2, 3]},
}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower().replace("λ", "lambda")).strip("_")


def cohort_config(row: dict, seed: int, epochs: int, threads: int = 2) -> dict:
    return {
        "method": "mutual",
        "seed": seed,
        "threads": threads,
        "data": DEMO_DATA,
        "model": {"backbone": "resnet10t", "embedding_dim": 32, "normalize": True},
        "mutual": {"members": 2, **row},
        "optim": {"lr": 1e-3, "epochs": epochs},
        "eval": {"recall_at": [1, 2, 4, 8], "every": 0},  # only the final epoch is reported
    }


def members_of(final: dict) -> list[str]:
    return sorted({key.split("/")[0] for key in final if key.startswith("member")})


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    options.add_argument("--epochs", type=int, default=10)
    options.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    options.add_argument("--work", default="runs/mutual_ablation", help="run folders (kept; finished runs are skipped)")
    options.add_argument("--tuned", action="store_true", help="tune the main rows alike on validation classes first (benchmarks/tuned.py)")
    options.add_argument("--trials", type=int, default=6, help="--tuned: trials per row")
    options.add_argument("--trial-epochs", type=int, default=4, help="--tuned: epochs of a trial")
    options.add_argument("--threads", type=int, default=2, help="threads of each run (1: beside another benchmark on 2 cores)")
    args = options.parse_args()
    if args.tuned:
        from benchmarks.tuned import run_tuned_mutual

        run_tuned_mutual(args, ROWS, cohort_config, slug)
        return

    work, started = Path(args.work), time.perf_counter()
    finals: dict[str, dict[int, dict]] = {}
    for seed in args.seeds:  # seed by seed, so that an interrupted table has whole seeds
        for name in args.rows:
            out = work / f"seed{seed}" / slug(name)
            finals.setdefault(name, {})[seed] = train_once(cohort_config(ROWS[name], seed, args.epochs), out, "mutual_ablation")["final"]
            write_table(args, finals, (time.perf_counter() - started) / 60)


def write_table(args, finals: dict[str, dict[int, dict]], minutes: float) -> None:
    lines = [
        f"# Diversified mutual learning at CPU scale: Recall@1 (%) on the held-out glyph classes, mean ± std over seeds {args.seeds}",
        "",
        f"Members: ResNet-10t 32-d from scratch, {args.epochs} epochs, triplet (margin 0.2, distance-weighted) + λ × RKD "
        "(distance + 2 × angle) towards the peers. Final epoch.",
        "",
        "| cohort | members, mean | member 0 (τ = 1) | ensemble | ensemble − members' mean | R@2 ensemble | seeds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in args.rows:
        per_seed = finals.get(name, {})
        if not per_seed:
            lines.append(f"| {name} | – | – | – | – | – | 0 |")
            continue
        members_mean = [statistics.mean(f[f"{m}/recall@1"] for m in members_of(f)) for f in per_seed.values()]
        member0 = [f["member0/recall@1"] for f in per_seed.values()]
        ensemble = [f["ensemble/recall@1"] for f in per_seed.values()]
        gain = [e - m for e, m in zip(ensemble, members_mean)]
        ensemble_r2 = [f["ensemble/recall@2"] for f in per_seed.values()]
        lines.append(
            f"| {name} | {mean_std(members_mean)} | {mean_std(member0)} | {mean_std(ensemble)} | "
            f"{mean_std(gain)} | {mean_std(ensemble_r2)} | {len(per_seed)} |"
        )
    lines += [
        "",
        "Rows switch on one diversity at a time (see the script's docstring); 'no diversity' members start from the "
        "same weights, step every iteration and see the same views, so only the distance-weighted miner's random "
        "draws set them apart.",
        "",
        f"{minutes:.0f} min of training in this invocation; runs already in --work are reused.",
    ]
    rerun = f"mutual_ablation --seeds {' '.join(map(str, args.seeds))} --epochs {args.epochs}"
    write_results("mutual_ablation", lines, {"args": vars(args), "finals": finals}, rerun=rerun)


if __name__ == "__main__":
    main()
