"""The transfer table's compression column with every method tuned alike, on validation classes only
(``python -m benchmarks.transfer_table --tuned``; the protocol of Musgrave, Belongie and Lim, ECCV 2020).

Per method, the same budget: ``metrictransfer tune`` with ``--trials`` TPE trials (median pruning) of the
target at ``--trial-epochs`` epochs, trained on 80 % of the glyphs training classes and chosen by Recall@1
on the other 20 %, from a source trained on those 80 % only (it has not seen the validation classes
either). Each method searches the learning rate and one setting of its own (``SPACES``). The best values
are then trained exactly as the untuned table's runs are (all training classes, the table's sources and
seeds, ``--epochs-scale``), and the test split is read once, at each run's end.

Writes benchmarks/results/transfer_table_tuned.md and .json beside the untuned transfer_table.json.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchmarks.common import RESULTS, ROOT, mean_std, train_once, write_results
from metrictransfer.config import apply_overrides

VALIDATION = {"classes": 0.2, "seed": 0}
LR = {"optim.lr": {"type": "log_uniform", "low": 1.0e-4, "high": 1.0e-2}}
# one setting of each method's own beside the learning rate; methods without one search the weight decay
SPACES = {
    "Proxy-Anchor alone": {**LR, "optim.weight_decay": {"type": "log_uniform", "low": 1.0e-6, "high": 1.0e-2}},
    "FitNet + PA": {**LR, "transfer.weight": {"type": "log_uniform", "low": 0.1, "high": 10.0}},
    "Attention + PA": {**LR, "transfer.weight": {"type": "log_uniform", "low": 100.0, "high": 10000.0}},
    "CRD + PA": {**LR, "transfer.weight": {"type": "log_uniform", "low": 0.1, "high": 10.0}},
    "DarkRank": {**LR, "transfer.loss.params.alpha": {"type": "float", "low": 1.0, "high": 5.0}},
    "PKT": {**LR, "optim.weight_decay": {"type": "log_uniform", "low": 1.0e-6, "high": 1.0e-2}},
    "RKD": {**LR, "transfer.loss.params.angle_weight": {"type": "float", "low": 0.5, "high": 4.0}},
    "Relaxed contrastive": {**LR, "transfer.loss.params.sigma": {"type": "float", "low": 0.5, "high": 2.0}},
    "Relaxed MS": {**LR, "transfer.loss.params.sigma": {"type": "float", "low": 0.5, "high": 2.0}},
    # the control of rows tuned in a later session, with retrained sources (see transfer_table.METHODS)
    "Relaxed contrastive, rerun": {**LR, "transfer.loss.params.sigma": {"type": "float", "low": 0.5, "high": 2.0}},
}


def as_component(raw: dict) -> dict:
    """A recipe whose transfer loss is ``{name, params}``, so that its parameters can be set by key."""
    transfer = raw.get("transfer")
    if transfer and isinstance(transfer.get("loss"), str):
        transfer["loss"] = {"name": transfer["loss"], "params": {}}
    return raw


def shown(value) -> str:
    return str(value) if isinstance(value, (list, str)) else f"{value:.3g}"


def value_at(raw: dict, key: str):
    node = raw
    for part in key.split("."):
        node = node[part]
    return node


def tune_method(name: str, recipe: dict, out: Path, trials: int, seed: int) -> dict:
    """``metrictransfer tune`` for one method (its study resumes if an earlier invocation was stopped);
    the best values of its search space."""
    out.mkdir(parents=True, exist_ok=True)
    recipe_file, space_file = out.parent / f"{out.name}.recipe.yaml", out.parent / f"{out.name}.space.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False))
    space_file.write_text(yaml.safe_dump(SPACES[name], sort_keys=False))
    command = [sys.executable, "-m", "metrictransfer.cli", "tune", str(recipe_file), "--space", str(space_file)]
    command += ["--trials", str(trials), "--out", str(out), "--seed", str(seed)]
    print(f"== tune {name}: {' '.join(command)}", flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    best = yaml.safe_load((out / "best.yaml").read_text())
    return {key: value_at(best, key) for key in SPACES[name]}


def study_counts(out: Path) -> dict:
    """How many trials finished and how many were pruned (from the study's trials table)."""
    with open(out / "trials.csv", newline="") as f:
        states = [row.get("state", "") for row in csv.DictReader(f)]
    return {"complete": sum(s == "COMPLETE" for s in states), "pruned": sum(s == "PRUNED" for s in states)}


def run_tuned(args, settings: dict, methods: dict, source_config, target_config, slug) -> None:
    """Tune every method of the compression column, then train its best values over the seeds."""
    work = Path(args.work) / "tuned"
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    started = time.perf_counter()
    setting = settings["compression"]
    untuned = json.loads((RESULTS / "transfer_table.json").read_text())
    results: dict = {"args": vars(args), "budget": {"trials": args.trials, "trial_epochs": args.trial_epochs}, "methods": {}}
    earlier = RESULTS / "transfer_table_tuned.json"
    if earlier.is_file():  # rows of an earlier invocation (another --methods) stay in the table
        results["methods"] = json.loads(earlier.read_text()).get("methods", {})

    validation_source = work / "validation_source"
    raw = source_config(0, args.epochs_scale, threads)
    raw["data"] = {**raw["data"], "validation": VALIDATION}
    train_once(raw, validation_source, "tuned source")
    for seed in args.seeds:
        train_once(source_config(seed, args.epochs_scale, threads), Path(args.work) / f"seed{seed}" / "source", "transfer_table")

    for name, method in methods.items():
        trial = as_component(target_config(setting, method, validation_source, 0, 1.0, threads))
        trial["data"] = {**trial["data"], "validation": VALIDATION}
        trial["optim"]["epochs"] = args.trial_epochs
        trial["eval"] = {**trial["eval"], "every": 1}  # a validation value per epoch, for the pruner
        study = work / "studies" / slug(name)
        best = tune_method(name, trial, study, args.trials, 0)
        finals = {}
        for seed in args.seeds:
            raw = as_component(target_config(setting, method, Path(args.work) / f"seed{seed}" / "source", seed, args.epochs_scale, threads))
            raw = apply_overrides(raw, [f"{key}={json.dumps(value)}" for key, value in best.items()])
            finals[seed] = train_once(raw, work / f"seed{seed}" / slug(name), "transfer_table --tuned")["final"]
        before = untuned["targets"]["compression"].get(name, {})
        results["methods"][name] = {"best": best, "study": study_counts(study), "tuned": finals, "untuned": before}
        write_tuned_table(args, results, (time.perf_counter() - started) / 60)


def write_tuned_table(args, results: dict, minutes: float) -> None:
    lines = [
        f"# Transfer table, compression column, tuned alike on validation classes: Recall@1 (%), seeds {args.seeds}",
        "",
        f"Budget per method: {args.trials} TPE trials of {args.trial_epochs} epochs (median pruning), trained on 80 % of "
        "the training classes and chosen by Recall@1 on the other 20 %, from a source that saw only those 80 %. "
        "The best values then train as the untuned runs do (all training classes, "
        f"{args.epochs_scale}× the demo's epochs); test split read once per run, at its end.",
        "",
        "| method | untuned R@1 | tuned R@1 | tuned R@2 | best values | trials complete / pruned |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for name, row in results["methods"].items():
        tuned = list(row["tuned"].values())
        before = [r["recall@1"] for r in row["untuned"].values()]
        values = ", ".join(f"{key.split('.')[-1]} {shown(value)}" for key, value in row["best"].items())
        lines.append(
            f"| {name} | {mean_std(before) if before else '–'} | {mean_std([r['recall@1'] for r in tuned])} | "
            f"{mean_std([r['recall@2'] for r in tuned])} | {values} | {row['study']['complete']} / {row['study']['pruned']} |"
        )
    lines += [
        "",
        "Untuned: benchmarks/results/transfer_table.json (the same seeds, sources and length, with each method's default settings).",
        "",
        f"{minutes:.0f} min in this invocation; finished runs and studies in --work are reused.",
    ]
    rerun = (
        f"transfer_table --tuned --settings compression --seeds {' '.join(map(str, args.seeds))} "
        f"--epochs-scale {args.epochs_scale} --trials {args.trials} --trial-epochs {args.trial_epochs}"
    )
    write_results("transfer_table_tuned", lines, results, rerun=rerun)


# ------------------------------------------------------------------------------------- mutual learning

MUTUAL_SPACES = {  # the ablation's main rows; λ (and τ where members differ in it) beside the learning rate
    "independent (λ = 0)": {**LR, "optim.weight_decay": {"type": "log_uniform", "low": 1.0e-6, "high": 1.0e-2}},
    "mutual, no diversity": {**LR, "mutual.weight": {"type": "log_uniform", "low": 0.1, "high": 10.0}},
    "+ model": {**LR, "mutual.weight": {"type": "log_uniform", "low": 0.1, "high": 10.0}},
    "+ temporal": {
        **LR,
        "mutual.weight": {"type": "log_uniform", "low": 0.1, "high": 10.0},
        "mutual.update_every": {"type": "categorical", "choices": [[1, 1], [1, 2], [1, 3]]},
    },
    "+ view": {**LR, "mutual.weight": {"type": "log_uniform", "low": 0.1, "high": 10.0}},
    "all three": {
        **LR,
        "mutual.weight": {"type": "log_uniform", "low": 0.1, "high": 10.0},
        "mutual.update_every": {"type": "categorical", "choices": [[1, 1], [1, 2], [1, 3]]},
    },
}


def run_tuned_mutual(args, rows: dict, cohort_config, slug) -> None:
    """Tune the ablation's main rows alike on validation classes, then train their best values over the seeds."""
    work = Path(args.work) / "tuned"
    started = time.perf_counter()
    untuned = json.loads((RESULTS / "mutual_ablation.json").read_text())["finals"]
    results: dict = {"args": vars(args), "budget": {"trials": args.trials, "trial_epochs": args.trial_epochs}, "rows": {}}
    earlier = RESULTS / "mutual_ablation_tuned.json"
    if earlier.is_file():  # rows of an earlier invocation (another --rows) stay in the table
        results["rows"] = json.loads(earlier.read_text()).get("rows", {})
    for name, space in MUTUAL_SPACES.items():
        if name not in args.rows:
            continue
        trial = cohort_config(rows[name], 0, args.trial_epochs, args.threads)
        trial["data"] = {**trial["data"], "validation": VALIDATION}
        trial["eval"] = {**trial["eval"], "every": 1}
        SPACES[name] = space
        study = work / "studies" / slug(name)
        best = tune_method(name, trial, study, args.trials, 0)
        finals = {}
        for seed in args.seeds:
            raw = cohort_config(rows[name], seed, args.epochs, args.threads)
            raw = apply_overrides(raw, [f"{k}={json.dumps(v)}" for k, v in best.items()])
            finals[seed] = train_once(raw, work / f"seed{seed}" / slug(name), "mutual_ablation --tuned")["final"]
        results["rows"][name] = {"best": best, "study": study_counts(study), "tuned": finals, "untuned": untuned.get(name, {})}
        results["rows"] = {row: results["rows"][row] for row in MUTUAL_SPACES if row in results["rows"]}  # the ablation's order
        write_tuned_mutual_table(args, results, (time.perf_counter() - started) / 60)


def write_tuned_mutual_table(args, results: dict, minutes: float) -> None:
    tuned_rows = " ".join(repr(r) for r in results["rows"])
    lines = [
        f"# Mutual learning ablation, main rows tuned alike on validation classes: Recall@1 (%), seeds {args.seeds}",
        "",
        f"Budget per row: {args.trials} TPE trials of {args.trial_epochs} epochs (median pruning) on 80 % of the training "
        f"classes, chosen by member 0's Recall@1 on the other 20 %; the best values then train {args.epochs} epochs on "
        "all training classes; test split read once per run, at its end.",
        "",
        "| cohort | member 0 untuned | member 0 tuned | ensemble untuned | ensemble tuned | best values | trials complete / pruned |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for name, row in results["rows"].items():
        tuned, before = list(row["tuned"].values()), list(row["untuned"].values())

        def cell(runs: list, key: str) -> str:
            return mean_std([r[key] for r in runs]) if runs else "–"

        values = ", ".join(f"{key.split('.')[-1]} {shown(value)}" for key, value in row["best"].items())
        lines.append(
            f"| {name} | {cell(before, 'member0/recall@1')} | {cell(tuned, 'member0/recall@1')} | {cell(before, 'ensemble/recall@1')} | "
            f"{cell(tuned, 'ensemble/recall@1')} | {values} | {row['study']['complete']} / {row['study']['pruned']} |"
        )
    lines += [
        "",
        "Untuned: benchmarks/results/mutual_ablation.json (the same seeds and length, λ = 1, τ = (1, 2), lr 10⁻³).",
        "",
        f"{minutes:.0f} min in this invocation; finished runs and studies in --work are reused.",
    ]
    rerun = (
        f"mutual_ablation --tuned --rows {tuned_rows} --seeds {' '.join(map(str, args.seeds))} --epochs {args.epochs} "
        f"--trials {args.trials} --trial-epochs {args.trial_epochs}"
    )
    write_results("mutual_ablation_tuned", lines, results, rerun=rerun)
