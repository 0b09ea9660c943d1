"""What a study leaves in its folder after each invocation: best.yaml, trials.csv, trials.md,
history.png and importances.png, each written atomically from the storage (not from the trial folders,
so that any machine sharing the storage can write them)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import yaml

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from metrictransfer.engine.logging import save_figure, write_csv  # noqa: E402
from metrictransfer.formatting import percent  # noqa: E402
from metrictransfer.io import atomic_write_text  # noqa: E402
from metrictransfer.tuning.space import with_values  # noqa: E402
from metrictransfer.tuning.study import Plan, counts  # noqa: E402

if TYPE_CHECKING:
    import optuna

try:
    from optuna.trial import TrialState
except ImportError:  # run_study refuses to start without Optuna
    TrialState = None  # type: ignore[assignment,misc]


def write_summary(study: optuna.Study, plan: Plan) -> dict[str, Any]:
    """Write the study's files; returns the counts, the best trial and notes (what --json prints)."""
    out = plan.out
    trials = study.get_trials(deepcopy=False)
    metric = next((t.user_attrs["metric"] for t in trials if t.user_attrs.get("metric")), plan.metric or "value")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = best_trial(trials)
    found = counts(study)
    notes = []
    if found["RUNNING"]:
        notes.append(f"{found['RUNNING']} trial(s) still running (other workers or machines): run the command again to count them")
    write_csv(trial_rows(trials, plan), out / "trials.csv")
    if best is not None:
        atomic_write_text(best_recipe_text(plan, best, metric), out / "best.yaml")
    if any(t.value is not None for t in trials):
        plot_history(trials, metric, out / "history.png")
    note = importance_note(study, plan, complete)
    if note is None:
        plot_importances(study, out / "importances.png")
    else:
        notes.append(f"importances.png not drawn: {note}")
    atomic_write_text(trials_markdown(trials, plan, metric, best, found, notes), out / "trials.md")
    return {
        "metric": metric,
        "trials": {
            "wanted": plan.trials,
            "counted": found["counted"],
            "complete": found["COMPLETE"],
            "pruned": found["PRUNED"],
            "failed": found["FAIL"],
        },
        "best": None
        if best is None
        else {"trial": best.number, "value": best.value, "params": best.params, "folder": best.user_attrs.get("folder")},
        "files": {
            name: str(out / name)
            for name in ("best.yaml", "trials.csv", "trials.md", "history.png", "importances.png")
            if (out / name).is_file()
        },
        "notes": notes,
    }


def best_trial(trials: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial | None:
    """The complete trial of the highest value; of equal values the earliest (best.yaml and --final agree)."""
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None), key=lambda t: t.number)
    return max(complete, key=lambda t: float(t.value if t.value is not None else -math.inf), default=None)


def trial_rows(trials: list[optuna.trial.FrozenTrial], plan: Plan) -> list[dict[str, Any]]:
    """A row per trial: number, state (Optuna's name: COMPLETE, PRUNED, FAIL, RUNNING), value, each key of
    the space, seconds, note and folder."""
    rows = []
    for t in trials:
        row: dict[str, Any] = {"number": t.number, "state": t.state.name, "value": "" if t.value is None else t.value}
        row.update({key: t.params.get(key, "") for key in plan.space.keys})
        row["seconds"] = t.user_attrs.get("seconds", "")
        row["note"] = t.user_attrs.get("note", "")
        row["folder"] = t.user_attrs.get("folder", "")
        rows.append(row)
    return rows


def best_recipe(plan: Plan, best: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The recipe (as written, --set overrides applied) with the best trial's values."""
    return with_values(plan.recipe, dict(best.params))


def best_recipe_text(plan: Plan, best: optuna.trial.FrozenTrial, metric: str) -> str:
    folds = f" (mean of {plan.folds} folds)" if plan.folds > 1 else ""
    value = percent(float(best.value or 0))  # a complete trial's: never None
    values = ", ".join(f"{k}: {_cell(v)}" for k, v in best.params.items())
    header = [
        f"# metrictransfer tune: the best trial of study {plan.study_name!r} ({plan.out}), from {plan.recipe_name}.",
        f"# Trial {best.number}: {metric} {value} on the validation data (data.validation) at its best epoch{folds}.",
        "# Chosen on the validation data only: the test split was not used to choose it.",
        f"# The study's values: {values}",
        "# `metrictransfer train` of this file repeats the trial; `metrictransfer tune ... --final` retrains it on all",
        "# training classes (without data.validation) and evaluates the test split once per seed.",
    ]
    return "\n".join(header) + "\n" + str(yaml.safe_dump(best_recipe(plan, best), sort_keys=False))


def trials_markdown(
    trials: list[optuna.trial.FrozenTrial],
    plan: Plan,
    metric: str,
    best: optuna.trial.FrozenTrial | None,
    found: dict[str, int],
    notes: list[str],
) -> str:
    lines = [
        f"# Study {plan.study_name}",
        "",
        f"Recipe {plan.recipe_name}, space {plan.space.path}: {found['counted']} of {plan.trials} trials done "
        f"({found['COMPLETE']} complete, {found['PRUNED']} pruned; {found['FAIL']} failed, not counted).",
        f"Value: {metric} on the validation data at each trial's best epoch"
        + (f", mean of {plan.folds} folds" if plan.folds > 1 else "")
        + "; pruned trials show their last reported value. The test split chose nothing.",
        "",
    ]
    if best is not None:
        lines += [f"Best: trial {best.number}, {metric} {percent(float(best.value or 0))} (best.yaml).", ""]
    keys = plan.space.keys
    lines.append("| trial | state | value | " + " | ".join(f"`{k}`" for k in keys) + " | seconds | note |")
    lines.append("|---:|---|---:|" + "---|" * len(keys) + "---:|---|")
    for t in trials:
        value = "" if t.value is None else percent(t.value)  # trials.csv keeps the fraction
        if best is not None and t.number == best.number:
            value = f"**{value}**"
        cells = [_cell(t.params.get(k, "")) for k in keys]
        note = str(t.user_attrs.get("note", "")).replace("|", "/")
        lines.append(
            f"| {t.number} | {t.state.name.lower()} | {value} | " + " | ".join(cells) + f" | {t.user_attrs.get('seconds', '')} | {note} |"
        )
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines).rstrip() + "\n"


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def plot_history(trials: list[optuna.trial.FrozenTrial], metric: str, path: Path) -> None:
    """Each trial's value against its number (pruned ones at their last reported value) and the running best."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    complete = [(t.number, float(t.value)) for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pruned = [(t.number, float(t.value)) for t in trials if t.state == TrialState.PRUNED and t.value is not None]
    if complete:
        ax.plot(*zip(*complete), "o", color="tab:blue", label="complete")
        running, best = [], -math.inf
        for number, value in complete:
            best = max(best, value)
            running.append((number, best))
        last = max(t.number for t in trials)
        xs, ys = zip(*(running + [(last, best)]))
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    if pruned:
        ax.plot(*zip(*pruned), "x", color="grey", label="pruned (last reported)")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{metric} (validation)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def importance_note(study: optuna.Study, plan: Plan, complete: list[optuna.trial.FrozenTrial]) -> str | None:
    """Why there are no importances to draw, or None."""
    if len(plan.space.params) < 2:
        return "the space has a single key"
    if len(complete) < 2:
        return f"{len(complete)} complete trial(s); importances need at least 2"
    if len({t.value for t in complete}) < 2:
        return "every complete trial has the same value"
    if any(isinstance(c, list) for p in plan.space.params for c in p.choices):
        return "Optuna's importance evaluator cannot take list choices (such as mutual.update_every)"
    return None


def plot_importances(study: optuna.Study, path: Path) -> None:
    """Optuna's parameter importances (its default evaluator) of the complete trials, as horizontal bars."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few trials: the evaluators warn that their estimates are rough
        importances = optuna.importance.get_param_importances(study)
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.45 * len(names)), dpi=120)
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (Optuna's default evaluator)")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
