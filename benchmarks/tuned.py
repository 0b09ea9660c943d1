"""The transfer table's columns with every method tuned alike, on validation classes only
(``python -m benchmarks.transfer_table --tuned``; the protocol of Musgrave, Belongie and Lim, ECCV 2020).

Per method, the same budget: ``metrictransfer tune`` with ``--trials`` TPE trials (median pruning) of the
target at ``--trial-epochs`` epochs, trained on 80 % of the glyphs training classes and chosen by Recall@1
on the other 20 %, from a source trained on those 80 % only (it has not seen the validation classes
either). Each method searches the learning rate and one setting of its own (``SPACES``). The best values
are then trained exactly as the untuned table's runs are (all training classes, the table's sources and
seeds, ``--epochs-scale``), and the test split is read once, at each run's end.

Writes benchmarks/results/transfer_table_tuned.md and .json beside the untuned transfer_table.json, a
section per column (``--settings``; the compression column was tuned first, the others after it).
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
# the gradients' norm, over the range where clipping acts on these runs (0.1 and 1 both stopped RKD's
# divergence in benchmarks/rkd_divergence.py)
CLIP = {"optim.grad_clip": {"type": "log_uniform", "low": 0.01, "high": 1.0}}
# one setting of each method's own beside the learning rate; methods without one search the weight decay
SPACES = {
    "Proxy-Anchor alone": {**LR, "optim.weight_decay": {"type": "log_uniform", "low": 1.0e-6, "high": 1.0e-2}},
    "FitNet + PA": {**LR, "transfer.weight": {"type": "log_uniform", "low": 0.1, "high": 10.0}},
    "Attention + PA": {**LR, "transfer.weight": {"type": "log_uniform", "low": 100.0, "high": 10000.0}},
    "CRD + PA": {**LR, "transfer.weight": {"type": "log_uniform", "low": 0.1, "high": 10.0}},
    "DarkRank": {**LR, "transfer.loss.params.alpha": {"type": "float", "low": 1.0, "high": 5.0}},
    "PKT": {**LR, "optim.weight_decay": {"type": "log_uniform", "low": 1.0e-6, "high": 1.0e-2}},
    "RKD": {**LR, "transfer.loss.params.angle_weight": {"type": "float", "low": 0.5, "high": 4.0}},
    # its own setting here is the clipping norm; RKD's weights at their defaults
    "RKD, clipped gradients": {**LR, **CLIP},
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


def tune_method(name: str, recipe: dict, out: Path, trials: int, seed: int, space: dict | None = None) -> dict:
    """``metrictransfer tune`` for one method (its study resumes if an earlier invocation was stopped);
    the best values of its search space (``space``, else ``SPACES[name]``)."""
    space = SPACES[name] if space is None else space
    out.mkdir(parents=True, exist_ok=True)
    recipe_file, space_file = out.parent / f"{out.name}.recipe.yaml", out.parent / f"{out.name}.space.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False))
    space_file.write_text(yaml.safe_dump(space, sort_keys=False))
    command = [sys.executable, "-m", "metrictransfer.cli", "tune", str(recipe_file), "--space", str(space_file)]
    command += ["--trials", str(trials), "--out", str(out), "--seed", str(seed)]
    print(f"== tune {name}: {' '.join(command)}", flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    best = yaml.safe_load((out / "best.yaml").read_text())
    return {key: value_at(best, key) for key in space}


def study_counts(out: Path) -> dict:
    """How many trials finished and how many were pruned (from the study's trials table)."""
    with open(out / "trials.csv", newline="") as f:
        states = [row.get("state", "") for row in csv.DictReader(f)]
    return {"complete": sum(s == "COMPLETE" for s in states), "pruned": sum(s == "PRUNED" for s in states)}


def chosen_run(check: dict) -> dict:
    """The full-length run of the trial a study chose (its best trial value), from :func:`trial_vs_final`'s result."""
    return max(check["runs"], key=lambda run: run["trial_value"])


def trial_vs_final(study: Path, space: dict, final_epochs: int, out: Path, origin: str) -> dict:
    """Whether a study's short trials predict the full-length runs: each complete trial's values trained
    again for ``final_epochs`` on the same training and validation classes (the trial's recipe otherwise),
    its validation Recall@1 per epoch, and Spearman's rank correlation between the trial values (best
    epoch of the short trial) and these final values (final epoch). The test split is never read."""
    from scipy.stats import spearmanr

    recipe = yaml.safe_load((study.parent / f"{study.name}.recipe.yaml").read_text())
    recipe["optim"]["epochs"] = final_epochs
    with open(study / "trials.csv", newline="") as f:
        complete = [row for row in csv.DictReader(f) if row["state"] == "COMPLETE"]
    runs = []
    for row in complete:
        values = {key: yaml.safe_load(row[key]) for key in space}
        raw = apply_overrides(json.loads(json.dumps(recipe)), [f"{key}={json.dumps(value)}" for key, value in values.items()])
        folder = out / f"trial-{int(row['number']):04d}"
        result = train_once(raw, folder, origin)
        with open(folder / "log.csv", newline="") as f:
            curve = [float(r["recall@1"]) for r in csv.DictReader(f) if r.get("recall@1")]
        runs.append(
            {
                "trial": int(row["number"]),
                "values": values,
                "trial_value": float(row["value"]),
                "final_value": result["validation"]["final"]["recall@1"],
                "curve": curve,
            }
        )
    rho = float(spearmanr([r["trial_value"] for r in runs], [r["final_value"] for r in runs]).statistic) if len(runs) > 2 else None
    best_trial = max(runs, key=lambda r: r["trial_value"]) if runs else None
    best_final = max(runs, key=lambda r: r["final_value"]) if runs else None
    return {
        "final_epochs": final_epochs,
        "runs": runs,
        "spearman": None if rho != rho else rho,  # NaN: constant values
        "chosen_is_best_final": bool(runs) and best_trial is best_final,
        "regret": (best_final["final_value"] - best_trial["final_value"]) if runs else None,
    }


def plot_curves(curves: dict[str, list[float]], path: Path, title: str) -> None:
    """Validation Recall@1 (%) per epoch, one line per method, as a PNG for the benchmark's page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for name, curve in curves.items():
        axes.plot(range(1, len(curve) + 1), [100 * v for v in curve], marker="o", label=name)
    axes.set(xlabel="epoch", ylabel="validation R@1 (%)", title=title)
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.title.set_fontsize(9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def trial_recipe(args, setting: dict, method: dict | None, validation_source: Path, threads: int, target_config) -> dict:
    """A trial of the compression column's studies: the target on 80 % of the training classes, from the
    source that saw only those, evaluated on the other 20 % every epoch (for the pruner)."""
    trial = as_component(target_config(setting, method, validation_source, 0, 1.0, threads))
    trial["data"] = {**trial["data"], "validation": VALIDATION}
    trial["optim"]["epochs"] = args.trial_epochs
    trial["eval"] = {**trial["eval"], "every": 1}
    return trial


# Why FitNet + PA leads the tuned compression column: its best values with one part changed at a time
# (validation classes, full length), beside the relaxed losses with Proxy-Anchor's labels added, and the
# relaxed contrastive loss's σ and δ varied one at a time (overrides applied after the chosen values).
ABLATIONS = {
    "FitNet, no Proxy-Anchor term": ("FitNet + PA", ["transfer.metric_weight=0.0"]),
    "FitNet + PA, last stage only": ("FitNet + PA", ["transfer.hint_stages=1"]),
    "Proxy-Anchor alone, FitNet's lr": ("FitNet + PA", ["method=source", "transfer=null"]),
    "Relaxed contrastive + PA": ("Relaxed contrastive, rerun", ["transfer.metric_weight=1.0"]),
    "Relaxed MS + PA": ("Relaxed MS", ["transfer.metric_weight=1.0"]),
    # the relaxed contrastive loss's σ and δ one at a time around its chosen values (paper: σ = 1, δ = 1)
    "Relaxed contrastive, σ = 0.5": ("Relaxed contrastive, rerun", ["transfer.loss.params.sigma=0.5"]),
    "Relaxed contrastive, σ = 1": ("Relaxed contrastive, rerun", ["transfer.loss.params.sigma=1.0"]),
    "Relaxed contrastive, δ = 0.5": ("Relaxed contrastive, rerun", ["transfer.loss.params.delta=0.5"]),
    "Relaxed contrastive, δ = 2": ("Relaxed contrastive, rerun", ["transfer.loss.params.delta=2.0"]),
    # σ = 0.5 carried the relaxed losses in the foundation-style benchmark and the other columns' checks
    "Relaxed MS, σ = 0.5": ("Relaxed MS", ["transfer.loss.params.sigma=0.5"]),
    "Relaxed MS, σ = 1": ("Relaxed MS", ["transfer.loss.params.sigma=1.0"]),
}


def run_trial_check(args, settings: dict, methods: dict, source_config, target_config, slug) -> None:
    """For each column of ``args.settings`` (its tuned studies): whether the short trials predict
    full-length runs (``trial_vs_final``), validation R@1 per epoch of the top three at their chosen values,
    and the ablations of ``ABLATIONS`` whose method is among ``methods``. Validation classes only: the test
    split is read only by :func:`test_best_change`."""
    work = Path(args.work) / "tuned"
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    raw = source_config(0, args.epochs_scale, threads)
    raw["data"] = {**raw["data"], "validation": VALIDATION}
    train_once(raw, work / "validation_source", "tuned source")
    for setting_name in args.settings:
        check_column(args, setting_name, settings, methods, target_config, slug, threads)
    write_trial_summary(settings, slug)


def write_trial_summary(settings: dict, slug) -> None:
    """One table of every column's trial check (from their results files): ρ and regret per method and column.
    The compression column's rerun of the relaxed contrastive loss shares the loss's row (it stands for it there)."""
    columns = {}
    for setting_name in settings:
        path = RESULTS / f"{trials_name(setting_name, slug)}.json"
        if path.is_file():
            rows = json.loads(path.read_text())["methods"]
            columns[setting_name] = {name.removesuffix(", rerun"): row for name, row in rows.items()}
    methods = list(dict.fromkeys(name for rows in columns.values() for name in rows))
    lines = [
        "# Do the trials predict the finals? Every column's trial check",
        "",
        "Per method and column: Spearman's ρ between the short trials' validation R@1 and the same values' at the "
        "finals' length (n complete trials), and the regret, the full-length validation R@1 (points) lost by the "
        "study's choice. ρ = 1 with regret 0: the trials ranked the settings as full-length runs do. The column "
        "tables give the runs and each column's command; compression's relaxed contrastive row is its rerun, whose "
        "sources were retrained.",
        "",
        "| method | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name in methods:
        cells = []
        for rows in columns.values():
            row = rows.get(name)
            if row is None:
                cells.append("–")
                continue
            cells.append(f"ρ {shown_rho(row)} ({len(row['runs'])}), regret {100 * row['regret']:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    record = {
        setting: {name: {"spearman": row["spearman"], "n": len(row["runs"]), "regret": row["regret"]} for name, row in rows.items()}
        for setting, rows in columns.items()
    }
    write_results("transfer_table_trials_summary", lines, {"columns": record}, rerun="transfer_table --trial-summary")


def shown_rho(check: dict) -> str:
    """A trial check's ρ for a table ("–" where it is undefined: under three trials, or constant values)."""
    return "–" if check["spearman"] is None else f"{check['spearman']:.2f}"


def trials_name(setting_name: str, slug) -> str:
    """The results file of a column's trial check (the compression column's keeps its first name)."""
    return "transfer_table_trials" if setting_name == "compression" else f"transfer_table_trials_{slug(setting_name)}"


def ablation_base(base: str, methods: dict) -> str | None:
    """The method an ablation starts from in this invocation: the compression column's rerun of the relaxed
    contrastive loss stands for the loss itself in the other columns."""
    for name in (base, base.removesuffix(", rerun")):
        if name in methods:
            return name
    return None


def check_column(args, setting_name: str, settings: dict, methods: dict, target_config, slug, threads: int) -> None:
    started = time.perf_counter()
    work = Path(args.work) / "tuned"
    column = column_folder(work, setting_name, slug)
    setting = settings[setting_name]
    final_epochs = max(1, round(10 * args.epochs_scale))
    validation_source = work / "validation_source"
    name = trials_name(setting_name, slug)
    earlier = RESULTS / f"{name}.json"
    results: dict = {"args": vars(args), "setting": setting_name, "methods": {}, "ablations": {}}
    if earlier.is_file():
        earlier_results = json.loads(earlier.read_text())
        results.update({key: value for key, value in earlier_results.items() if key in ("methods", "ablations")})
        results["tested_changes"] = earlier_tested_changes(earlier_results)
    for method_name, method in methods.items():
        study = column / "studies" / slug(method_name)
        tune_method(method_name, trial_recipe(args, setting, method, validation_source, threads, target_config), study, args.trials, 0)
        check = trial_vs_final(
            study, SPACES[method_name], final_epochs, column / "trial_vs_final" / slug(method_name), "transfer_table --trial-check"
        )
        results["methods"][method_name] = {"study": study_counts(study), **check}
        write_trial_table(args, results, (time.perf_counter() - started) / 60, setting_name, slug)
    for ablation, (listed_base, changes) in ABLATIONS.items():
        base = ablation_base(listed_base, results["methods"])
        if base is None:
            continue
        chosen = chosen_run(results["methods"][base])
        recipe = yaml.safe_load((column / "studies" / f"{slug(base)}.recipe.yaml").read_text())
        recipe["optim"]["epochs"] = final_epochs
        overrides = [f"{key}={json.dumps(value)}" for key, value in chosen["values"].items()] + changes
        raw = {key: value for key, value in apply_overrides(recipe, overrides).items() if value is not None}  # "transfer=null": no section
        result = train_once(raw, column / "ablations" / slug(ablation), "transfer_table --trial-check")
        results["ablations"][ablation] = {
            "base": base,
            "changes": changes,
            "values": chosen["values"],
            "final_value": result["validation"]["final"]["recall@1"],
        }
        write_trial_table(args, results, (time.perf_counter() - started) / 60, setting_name, slug)
    test_best_change(args, results, setting_name, settings, methods, target_config, slug, threads, final_epochs)
    write_trial_table(args, results, (time.perf_counter() - started) / 60, setting_name, slug)
    ranked = sorted(results["methods"], key=lambda m: -max(run["final_value"] for run in results["methods"][m]["runs"]))
    curves = {m: chosen_run(results["methods"][m])["curve"] for m in ranked[:3]}
    plot_curves(
        curves,
        trial_figure(setting_name, slug),
        f"{setting_name.capitalize()} column: validation R@1 per epoch at each study's chosen values",
    )


def test_best_change(
    args, results: dict, setting_name: str, settings: dict, methods: dict, target_config, slug, threads: int, final_epochs: int
) -> None:
    """For each method of this invocation, its change with the best validation R@1 (an ablation, or the trial
    that was best at full length where the short trials chose another), when that beats the method's chosen
    values at full length (a choice made on validation classes only), trained as the tuned finals are (all
    training classes, the table's sources and seeds) and read once on the test split. Kept in
    ``results["tested_changes"]`` beside those of earlier invocations."""
    tested = results.setdefault("tested_changes", {})
    column = column_folder(Path(args.work) / "tuned", setting_name, slug)
    for method_name in methods:
        candidates = {name: row for name, row in results["ablations"].items() if row["base"] == method_name}
        best_final = max(results["methods"][method_name]["runs"], key=lambda run: run["final_value"])
        # trials at the finals' length would have chosen this one: the budget's remedy where ρ is weak
        candidates[f"{method_name}, trial best at {final_epochs} epochs"] = {
            "values": best_final["values"],
            "changes": [],
            "final_value": best_final["final_value"],
        }
        name, row = max(candidates.items(), key=lambda item: item[1]["final_value"])
        chosen = chosen_run(results["methods"][method_name])
        if row["final_value"] <= chosen["final_value"]:
            continue
        finals = {}
        for seed in args.seeds:
            raw = as_component(
                target_config(
                    settings[setting_name],
                    methods[method_name],
                    Path(args.work) / f"seed{seed}" / "source",
                    seed,
                    args.epochs_scale,
                    threads,
                )
            )
            overrides = [f"{key}={json.dumps(value)}" for key, value in row["values"].items()] + row["changes"]
            raw = {key: value for key, value in apply_overrides(raw, overrides).items() if value is not None}
            finals[seed] = train_once(raw, column / f"seed{seed}" / slug(name), "transfer_table --trial-check")["final"]
        tested[name] = {"base": method_name, "validation": row["final_value"], "base_validation": chosen["final_value"], "tuned": finals}


def earlier_tested_changes(earlier: dict) -> dict:
    """Tested changes of an earlier results file; one from before every method's change was tested held
    only the column's best, as ``test_of_best_change``."""
    tested = dict(earlier.get("tested_changes", {}))
    best = earlier.get("test_of_best_change")
    if best and best["name"] not in tested:
        base = earlier.get("ablations", {}).get(best["name"], {}).get("base", "")
        tested[best["name"]] = {key: value for key, value in best.items() if key != "name"} | {"base": base}
    return tested


def trial_figure(setting_name: str, slug) -> Path:
    return Path(f"docs/benchmarks/figures/{trials_name(setting_name, slug)}.png")


def write_trial_table(args, results: dict, minutes: float, setting_name: str, slug) -> None:
    final_epochs = max(1, round(10 * args.epochs_scale))
    lines = [
        f"# Do the tuned {setting_name} column's trials predict its finals? Validation Recall@1 (%)",
        "",
        f"Each complete trial of a method's study ({args.trial_epochs} epochs) trained again with the same values for {final_epochs} "
        "epochs, the finals' length, on the same 80 % of the training classes, and evaluated on the same 20 % of validation "
        "classes. ρ: Spearman's rank correlation between the trial values (best epoch) and the final-length values (final "
        "epoch); regret: the final-length R@1 lost by taking the study's best trial instead of the best final. The test split "
        "is not read.",
        "",
        "| method | trials complete / pruned | ρ (n) | chosen trial: trial R@1 → final R@1 | best final R@1 | regret (points) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in results["methods"].items():
        chosen = chosen_run(row)
        lines.append(
            f"| {name} | {row['study']['complete']} / {row['study']['pruned']} | {shown_rho(row)} ({len(row['runs'])}) | "
            f"{100 * chosen['trial_value']:.1f} → {100 * chosen['final_value']:.1f} | "
            f"{100 * max(run['final_value'] for run in row['runs']):.1f} | {100 * row['regret']:.1f} |"
        )
    if results["ablations"]:
        lines += [
            "",
            f"## One part changed at a time ({final_epochs} epochs, validation classes, seed 0)",
            "",
            "| run | from | change | validation R@1 |",
            "|---|---|---|---:|",
        ]
        for name, row in results["ablations"].items():
            lines.append(f"| {name} | {row['base']}'s chosen values | `{' '.join(row['changes'])}` | {100 * row['final_value']:.1f} |")
    tested = results.get("tested_changes", {})
    if tested:
        seeds = len(next(iter(tested.values()))["tuned"])
        lines += [
            "",
            f"## Each method's best change, on the test split ({seeds} seeds, read once per run)",
            "",
            "A method's change with the best validation R@1, where it beats the study's chosen values, trained as the tuned "
            f"finals are (all training classes, the table's sources and seeds, {final_epochs} epochs): one of the changes "
            f"above, or the trial that was best at {final_epochs} epochs where its study chose another (regret above 0). "
            "One choice beyond the equal budget of the tuned table, made on validation classes.",
            "",
            "| change | validation R@1: chosen values → change | test R@1 | test R@2 |",
            "|---|---:|---:|---:|",
        ]
        for name, row in sorted(tested.items(), key=lambda item: -item[1]["validation"]):
            runs = list(row["tuned"].values())
            lines.append(
                f"| {name} | {100 * row['base_validation']:.1f} → {100 * row['validation']:.1f} | "
                f"{mean_std([r['recall@1'] for r in runs])} | {mean_std([r['recall@2'] for r in runs])} |"
            )
    lines += [
        "",
        f"Figure: {trial_figure(setting_name, slug)} (the top three by final-length R@1).",
        "",
        f"{minutes:.0f} min in this invocation; finished runs are reused.",
    ]
    rerun = (
        f"transfer_table --trial-check --settings {setting_name!r} --methods {' '.join(repr(m) for m in results['methods'])} "
        f"--epochs-scale {args.epochs_scale} --trials {args.trials} --trial-epochs {args.trial_epochs}"
    )
    write_results(trials_name(setting_name, slug), lines, results, rerun=rerun)


def column_folder(work: Path, setting_name: str, slug) -> Path:
    """Where a column's studies and finals live: the compression column, tuned first, at the top of ``work``
    (its folders are reused as they are), every other column in a folder of its own."""
    return work if setting_name == "compression" else work / slug(setting_name)


def load_tuned_columns(path: Path) -> dict:
    """The tuned columns of an earlier invocation, so that rows of other ``--methods`` and ``--settings`` stay
    (a file from before the other columns were tuned holds the compression column as ``methods``)."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    return earlier.get("columns") or {"compression": earlier.get("methods", {})}


def run_tuned(args, settings: dict, methods: dict, source_config, target_config, slug) -> None:
    """Tune every method of each column in ``args.settings`` alike, then train its best values over the seeds."""
    work = Path(args.work) / "tuned"
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    started = time.perf_counter()
    untuned = json.loads((RESULTS / "transfer_table.json").read_text())
    results: dict = {"args": vars(args), "budget": {"trials": args.trials, "trial_epochs": args.trial_epochs}}
    results["columns"] = load_tuned_columns(RESULTS / "transfer_table_tuned.json")

    validation_source = work / "validation_source"  # one for every column: the targets differ, not the source
    raw = source_config(0, args.epochs_scale, threads)
    raw["data"] = {**raw["data"], "validation": VALIDATION}
    train_once(raw, validation_source, "tuned source")
    for seed in args.seeds:
        train_once(source_config(seed, args.epochs_scale, threads), Path(args.work) / f"seed{seed}" / "source", "transfer_table")

    for setting_name in args.settings:
        setting, column = settings[setting_name], column_folder(work, setting_name, slug)
        rows = results["columns"].setdefault(setting_name, {})
        for name, method in methods.items():
            study = column / "studies" / slug(name)
            best = tune_method(name, trial_recipe(args, setting, method, validation_source, threads, target_config), study, args.trials, 0)
            finals = {}
            for seed in args.seeds:
                source = Path(args.work) / f"seed{seed}" / "source"
                raw = as_component(target_config(setting, method, source, seed, args.epochs_scale, threads))
                raw = apply_overrides(raw, [f"{key}={json.dumps(value)}" for key, value in best.items()])
                finals[seed] = train_once(raw, column / f"seed{seed}" / slug(name), "transfer_table --tuned")["final"]
            before = untuned["targets"].get(setting_name, {}).get(name, {})
            rows[name] = {"best": best, "study": study_counts(study), "tuned": finals, "untuned": before}
            write_tuned_table(args, results, (time.perf_counter() - started) / 60)


def write_tuned_table(args, results: dict, minutes: float) -> None:
    lines = [
        f"# Transfer table tuned alike on validation classes: Recall@1 (%), seeds {args.seeds}",
        "",
        f"Budget per method and column: {args.trials} TPE trials of {args.trial_epochs} epochs (median pruning), trained on 80 % "
        "of the training classes and chosen by Recall@1 on the other 20 %, from a source that saw only those 80 %. "
        "The best values then train as the untuned runs do (all training classes, "
        f"{args.epochs_scale}× the demo's epochs); test split read once per run, at its end.",
    ]
    for setting_name, rows in results["columns"].items():
        if not rows:
            continue
        lines += [
            "",
            f"## {setting_name.capitalize()}",
            "",
            "| method | untuned R@1 | tuned R@1 | tuned R@2 | best values | trials complete / pruned |",
            "|---|---:|---:|---:|---|---:|",
        ]
        for name, row in rows.items():
            tuned = list(row["tuned"].values())
            before = [r["recall@1"] for r in row["untuned"].values()]
            values = ", ".join(f"{key.split('.')[-1]} {shown(value)}" for key, value in row["best"].items())
            lines.append(
                f"| {name} | {mean_std(before) if before else '–'} | {mean_std([r['recall@1'] for r in tuned])} | "
                f"{mean_std([r['recall@2'] for r in tuned])} | {values} | {row['study']['complete']} / {row['study']['pruned']} |"
            )
    lines += [
        "",
        "Targets: compression ResNet-10t 32-d, dimension reduction ResNet-18-D 16-d, self-transfer ResNet-18-D 128-d. "
        "Untuned: benchmarks/results/transfer_table.json (the same seeds, sources and length, with each method's default settings).",
        "",
        f"{minutes:.0f} min in this invocation; finished runs and studies in --work are reused.",
    ]
    rerun = (
        f"transfer_table --tuned --settings {' '.join(repr(s) for s in args.settings)} --seeds {' '.join(map(str, args.seeds))} "
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
