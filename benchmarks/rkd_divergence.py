"""RKD's diverged runs trained again with a lower learning rate or clipped gradients: which steadies them?

    .venv/bin/python -m benchmarks.rkd_divergence [--seed 0]

Tuned alike, RKD ends far lower on some seeds than on others, and those runs' training loss jumps
2-15x mid-run. This takes the tuned RKD runs of one seed (the dimension-reduction column of
``transfer_table --tuned`` and ``foundation_distill --tuned``; run those first) and trains their exact
recipes again with one change each: the learning rate divided by 3, or ``optim.grad_clip`` at 1 or 0.1.
Reported: the training loss of every epoch and the final test Recall@1. A diagnostic of one seed: the
changes come from the hypothesis, not from a search on validation classes, so they are not tuned results.
Writes benchmarks/results/rkd_divergence.md and .json; finished runs in --work are reused.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import yaml

from benchmarks.common import parser, train_once, write_results

# the tuned runs diagnosed: (name, run folder relative to runs/)
RUNS = {
    "transfer table, dimension reduction": "transfer_table/tuned/dimension_reduction/seed{seed}/rkd",
    "foundation-style teacher": "foundation_distill/tuned/seed{seed}/rkd",
}


def changes(lr: float) -> dict[str, tuple[str, str]]:
    """Each change: (its run folder's name, the override)."""
    return {
        "learning rate ÷ 3": ("lr_third", f"optim.lr={lr / 3}"),
        "gradients clipped at norm 1": ("clip_1", "optim.grad_clip=1.0"),
        "gradients clipped at norm 0.1": ("clip_0.1", "optim.grad_clip=0.1"),
    }


def epoch_losses(run: Path) -> list[float]:
    """The training loss of each epoch (the last row a run logged for it)."""
    with open(run / "log.csv", newline="") as f:
        last = {row["epoch"]: float(row["loss"]) for row in csv.DictReader(f)}
    return list(last.values())


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--seed", type=int, default=0)
    options.add_argument("--work", default="runs/rkd_divergence")
    args = options.parse_args()
    from metrictransfer.config import apply_overrides

    started, rows = time.perf_counter(), []
    for case, pattern in RUNS.items():
        original = Path("runs") / pattern.format(seed=args.seed)
        if not (original / "results.json").is_file():
            raise SystemExit(f"{original}: no finished tuned RKD run; run benchmarks.transfer_table and foundation_distill --tuned first")
        recipe = yaml.safe_load((original / "config.yaml").read_text())
        runs = {"as tuned": (original, json.loads((original / "results.json").read_text()))}
        for change, (folder, override) in changes(float(recipe["optim"]["lr"])).items():
            out = Path(args.work) / original.parts[1] / folder
            runs[change] = (out, train_once(apply_overrides(recipe, [override]), out, "rkd_divergence"))
        for change, (folder, result) in runs.items():
            rows.append({"case": case, "change": change, "losses": epoch_losses(folder), "recall@1": result["final"]["recall@1"]})
    lines = [
        f"# RKD's diverged runs again, one change each: training loss per epoch and test Recall@1, seed {args.seed}",
        "",
        "| run | change | training loss per epoch | test R@1 |",
        "|---|---|---|---:|",
    ]
    for row in rows:
        losses = " → ".join(f"{loss:.3f}" for loss in row["losses"])
        lines.append(f"| {row['case']} | {row['change']} | {losses} | {100 * row['recall@1']:.1f} |")
    lines += [
        "",
        "One seed, changes chosen from the hypothesis (a divergence), not by validation: a diagnostic, not a tuned result.",
        "",
        f"{(time.perf_counter() - started) / 60:.0f} min in this invocation; finished runs in --work are reused.",
    ]
    write_results("rkd_divergence", lines, {"args": vars(args), "rows": rows}, rerun=f"rkd_divergence --seed {args.seed}")


if __name__ == "__main__":
    main()
