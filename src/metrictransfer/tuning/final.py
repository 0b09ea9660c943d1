"""``tune --final``: the best configuration retrained on all training classes (without data.validation),
once per seed, each run evaluating the test split exactly once, at its end. The only place a study
reads the test split, after everything has been chosen."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from metrictransfer.config import RunConfig, build_config, config_to_dict, resume_differences
from metrictransfer.engine.run_folder import finished_run
from metrictransfer.engine.trainer import train
from metrictransfer.errors import ConfigError
from metrictransfer.formatting import metrics_text, percent
from metrictransfer.io import atomic_write_text
from metrictransfer.tuning.summary import best_recipe, best_trial

if TYPE_CHECKING:
    import optuna

    from metrictransfer.tuning.study import Plan


def final_config(recipe: dict[str, Any], seed: int) -> RunConfig:
    """The best recipe for a final run: no validation data (its classes train too), the test split
    evaluated once at the end (``eval.every: 0``), no best-epoch selection, the given seed."""
    raw = copy.deepcopy(recipe)
    data = raw.get("data")
    if isinstance(data, dict):
        data.pop("validation", None)
    checkpoint = raw.get("checkpoint")
    if isinstance(checkpoint, dict):
        checkpoint.pop("best", None)  # choosing an epoch needs validation data
    raw.setdefault("eval", {})["every"] = 0
    raw["eval"].pop("test", None)  # without validation data the test split is the evaluation
    raw["seed"] = seed
    return build_config(raw, origin=f"the best recipe, retrained with seed {seed}")


def run_final(study: optuna.Study, plan: Plan, seeds: list[int]) -> dict[str, Any]:
    """Train the final runs into ``DIR/final/seed-S`` (a finished one with the same configuration is kept,
    an interrupted one resumed), then write final.json and final.md: the test metrics, mean ± std."""
    best = best_trial(study.get_trials(deepcopy=False))
    if best is None:
        raise ConfigError(f"--final: no trial of {plan.out} is complete, so there is no best configuration to retrain")
    recipe = best_recipe(plan, best)
    runs: dict[str, dict[str, Any]] = {}
    for seed in dict.fromkeys(seeds):
        config = final_config(recipe, seed)
        folder = plan.out / "final" / f"seed-{seed}"
        results = finished_run(folder, config)
        if results is None:
            resume = _same_run(folder, config)
            plan.echo(f"final run, seed {seed}: {folder}" + (" (resumed)" if resume else ""))
            with contextlib.redirect_stdout(sys.stderr):  # epoch lines: stderr, as the trials'
                results = train(config, folder, resume=resume, overwrite=not resume, progress=False)
        runs[str(seed)] = {"folder": str(folder), "test": results["final"]}
        plan.echo(f"final run, seed {seed}: test split {metrics_text(results['final'], ', ')}")
    summary = _summary(runs)
    record = {
        "best_trial": best.number,
        "value": best.value,
        "metric": best.user_attrs.get("metric"),
        "params": best.params,
        "seeds": [int(s) for s in runs],
        "runs": runs,
        **summary,
        "note": "each run trained on the training classes with the validation ones; the test split was evaluated once per run",
    }
    atomic_write_text(json.dumps(record, indent=2), plan.out / "final.json")
    atomic_write_text(final_markdown(record, plan), plan.out / "final.md")
    return record


def _same_run(folder: Path, config: RunConfig) -> bool:
    """Whether ``folder`` holds an interrupted run of this very configuration (resumed, not restarted)."""
    try:
        saved = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8
        return False
    has_checkpoint = (folder / "checkpoint.pt").is_file() or (folder / "checkpoints").is_dir()
    return has_checkpoint and isinstance(saved, dict) and not resume_differences(saved, config_to_dict(config))


def _summary(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    metrics = list(dict.fromkeys(k for r in runs.values() for k in r["test"]))
    mean = {m: statistics.fmean(r["test"][m] for r in runs.values() if m in r["test"]) for m in metrics}
    std = {m: statistics.stdev(v) if len(v := [r["test"][m] for r in runs.values() if m in r["test"]]) > 1 else 0.0 for m in metrics}
    return {"mean": mean, "std": std}


def final_markdown(record: dict[str, Any], plan: Plan) -> str:
    metrics = list(record["mean"])
    values = ", ".join(f"`{k}` {v:.4g}" if isinstance(v, float) else f"`{k}` {v}" for k, v in record["params"].items())
    lines = [
        f"# Study {plan.study_name}: the best configuration on the test split",
        "",
        f"Trial {record['best_trial']} ({values}) was chosen on the validation data ({record['metric']} {percent(record['value'])}). "
        f"Retrained without data.validation, on every training class, once per seed; each run evaluated the test "
        "split once, at its end. Test metrics (%):",
        "",
        "| seed | " + " | ".join(metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for seed, run in record["runs"].items():
        lines.append(f"| {seed} | " + " | ".join(_percent(run["test"].get(m)) for m in metrics) + " |")
    n = len(record["runs"])
    cells = [f"{100 * record['mean'][m]:.1f} ± {100 * record['std'][m]:.1f}" if n > 1 else _percent(record["mean"][m]) for m in metrics]
    lines.append(f"| mean{' ± std' if n > 1 else ''} ({n}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _percent(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{100 * value:.1f}"
