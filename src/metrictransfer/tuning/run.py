"""``metrictransfer tune`` from start to end: check the recipe and the space, claim the study's folder and
storage, run the workers until the trials wanted are done, write the summary, and with ``--final`` the
final runs. The parts live beside this module: space (the space file), study (storage, workers, trials),
summary (best.yaml, tables, plots) and final (the retrained best configuration, tested once per seed)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml

from metrictransfer.config import RunConfig, apply_overrides, config_to_dict, load_config
from metrictransfer.engine.trainer import split_training_data
from metrictransfer.errors import ConfigError
from metrictransfer.evaluation.evaluate import check_recall_ranks
from metrictransfer.methods import METHODS
from metrictransfer.tuning.final import run_final
from metrictransfer.tuning.space import load_space
from metrictransfer.tuning.study import (
    DEFAULT_DB,
    Plan,
    Pruning,
    claim_study_folder,
    fail_stale_trials,
    open_storage,
    open_study,
    redacted,
    require_optuna,
    run_workers,
    work,
)
from metrictransfer.tuning.summary import write_summary

try:
    import optuna
except ImportError:  # require_optuna says how to install it
    optuna = None  # type: ignore[assignment]


def run_study(
    recipe: str | Path,
    space: str | Path,
    trials: int,
    out: str | Path,
    *,
    jobs: int = 1,
    storage: str | None = None,
    study_name: str | None = None,
    metric: str | None = None,
    seed: int = 0,
    overrides: list[str] | tuple[str, ...] = (),
    final_seeds: list[int] | None = None,
    overwrite: bool = False,
    pruning: Pruning | None = None,
    sampler: Any = None,
    progress: Literal["stdout", "stderr"] = "stdout",
) -> dict[str, Any]:
    """Run (or continue) a study of ``recipe`` over ``space`` until ``trials`` trials are finished
    (complete or pruned), then write DIR's summary (best.yaml, trials.csv, trials.md, history.png,
    importances.png) and, with ``final_seeds``, retrain the best configuration on all training classes
    once per seed and test it. Returns what the command prints with ``--json``."""
    require_optuna()
    if trials < 1 or jobs < 1:
        raise ConfigError(f"--trials and --jobs must be at least 1, got {trials} and {jobs}")
    overrides = list(overrides)
    config = load_config(recipe, overrides)  # every check of `metrictransfer train`, with its messages
    if config.data.validation is None:
        raise ConfigError(
            f"{recipe} has no data.validation: choosing hyperparameters on the test split would select on it; "
            "add data.validation: {classes: 0.2} to the recipe (or --set data.validation.classes=0.2)"
        )
    raw = apply_overrides(yaml.safe_load(Path(recipe).read_text()) or {}, overrides)
    searched = load_space(space, raw, str(recipe))
    if metric is not None:
        check_metric_name(metric, config)
    check_validation(config)
    out = Path(out)
    url = storage or f"sqlite:///{(out / DEFAULT_DB).resolve()}"
    name = study_name or out.resolve().name
    identity = {"config": config_to_dict(config), "space": searched.describe(), "metric": metric}
    claim_study_folder(out, identity, url, name, overwrite)
    plan = Plan(
        out=out,
        storage=url,
        study_name=name,
        recipe=raw,
        recipe_name=str(recipe),
        space=searched,
        trials=trials,
        metric=metric,
        folds=config.data.validation.folds,
        max_epochs=searched.max_epochs(config.optim.epochs),
        threads=_worker_threads(config.threads, jobs),
        pruning=pruning or Pruning(),
        seed=seed,
        progress=progress,
        sampler=sampler,
    )
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial is ours to print
    # list choices (space.py) are stored and read back fine; Optuna warns about them each time it loads them
    warnings.filterwarnings("ignore", message="Choices for a categorical distribution should be")
    try:
        storage_object = open_storage(url)
        study = open_study(storage_object, name, identity, overwrite and storage is not None)
        for number, note in fail_stale_trials(study, storage_object):
            plan.echo(f"trial {number} failed: {note}")
        try:
            if jobs == 1:
                work(plan, worker=0)
            else:
                run_workers(plan, jobs)
        finally:
            summary = write_summary(study, plan)
        result: dict[str, Any] = {"out": str(out), "study": name, "storage": redacted(url), **summary}
        if final_seeds:
            result["final"] = run_final(study, plan, final_seeds)
        return result
    finally:
        optuna.logging.set_verbosity(verbosity)


def check_validation(config: RunConfig) -> None:
    """Split the recipe's training data as every trial will, before the study's folder is claimed: a
    validation split that every trial would refuse (one class, ranks it cannot answer) is refused at
    once, and a small one warned about once, rather than after a trial is recorded as failed."""
    _, _, validation = split_training_data(config)
    check_recall_ranks(config, {"validation": validation}, METHODS[config.method])


def check_metric_name(metric: str, config: RunConfig) -> None:
    """``--metric``: a metric the trials' evaluation reports (a cohort's ``member0/recall@1`` too)."""
    known = [f"recall@{k}" for k in config.eval.recall_at] + ["map@r", "r_precision", "accuracy"]
    known += [f"agreement@{k}" for k in config.eval.agreement_at]
    if metric.rsplit("/", 1)[-1] not in known:
        raise ConfigError(f"--metric {metric}: not a metric the trials report; one of {', '.join(known)} (all higher-is-better)")


def _worker_threads(recipe_threads: int | None, jobs: int) -> int | None:
    """Each of ``jobs`` workers gets an equal share of the cores (one worker keeps the recipe's threads)."""
    if jobs == 1:
        return recipe_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // jobs)
    return min(share, recipe_threads) if recipe_threads else share
