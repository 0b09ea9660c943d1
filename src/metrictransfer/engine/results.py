"""A run's results: the metrics of its history, the row and model it is judged by, and ``results.json``'s
contents, for the trainer that writes them and the callbacks that plot and print them."""

from __future__ import annotations

from typing import Any

from metrictransfer.config import RunConfig
from metrictransfer.engine.logging import primary_metric
from metrictransfer.registry import METHODS, RETRIEVAL_METRICS


def curves(config: RunConfig, history: list[dict[str, Any]], primary: str) -> dict[str, list[tuple[int, float]]]:
    """One curve per evaluated model: the run's, or every cohort member's and the ensemble's."""
    prefixes = sorted({k.split("/")[0] for row in history for k in row if k.endswith("/" + primary)})
    if not prefixes:
        return {config.name or config.method: curve(history, primary)}
    return {prefix: curve(history, f"{prefix}/{primary}") for prefix in prefixes}


def curve(history: list[dict[str, Any]], metric: str = "recall@1") -> list[tuple[int, float]]:
    return [(row["epoch"], row[metric]) for row in history if metric in row]


#: Metrics an evaluation gives besides the registered retrieval metrics: the embeddings' clustering (NMI), a
#: label-free run's agreement with its source (``agreement@k``) and a classifier's accuracy.
OTHER_METRICS = ("nmi", "accuracy", "agreement")


def metrics_of(row: dict[str, Any]) -> dict[str, float]:
    """The metrics of a history row (its loss, times and counts left out), cohorts' prefixed ones too."""
    at_k = {name for name in RETRIEVAL_METRICS.names() if RETRIEVAL_METRICS.info(name, "at_k", False)} | {"agreement"}
    plain = {name for name in RETRIEVAL_METRICS.names() if name not in at_k} | set(OTHER_METRICS)

    def is_metric(key: str) -> bool:
        name = key.rsplit("/", 1)[-1]  # cohorts: member0/recall@1, ensemble/recall@1
        return name in plain or name.partition("@")[0] in at_k and name.partition("@")[2].isdigit()

    return {k: v for k, v in row.items() if is_metric(k)}


BEST_NAME = "best.pt"


def selection_key(config: RunConfig, output: str, history: list[dict[str, Any]]) -> str:
    """The history key the best model is chosen by: ``checkpoint.best`` (auto: the primary metric), of
    the run's output model when several are evaluated (a cohort's member)."""
    metric = primary_metric(history) if config.checkpoint.best in (None, "auto") else config.checkpoint.best
    evaluated = [row for row in history if row.get("evaluated_on") == "validation"]
    if not evaluated:
        return metric
    # a cohort's rows hold each member's metrics and, unprefixed, the ensemble's: choose by the output model
    if "/" not in metric and f"{output}/{metric}" in evaluated[-1]:
        return f"{output}/{metric}"
    if metric in evaluated[-1]:
        return metric
    known = ", ".join(sorted(metrics_of(evaluated[-1])))
    raise ValueError(f"checkpoint.best: {metric!r} is not a metric this run's validation gives; it gives: {known}")


def best_row(history: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The validation-evaluated row with the highest ``key``; the earliest of equal ones."""
    evaluated = [row for row in history if row.get("evaluated_on") == "validation" and key in row]
    return max(evaluated, key=lambda r: r[key]) if evaluated else None


def validated_results(
    config: RunConfig, history: list[dict[str, Any]], final_test: dict[str, float], best: dict[str, Any] | None
) -> dict[str, Any]:
    """A run with validation data: the test split's metrics of the final model (``final``) and of the
    best-by-validation model (``best``), each evaluated once after training; the history holds the
    validation metrics the choice was made on."""
    evaluated = [row for row in history if row.get("evaluated_on") == "validation"]
    results: dict[str, Any] = {
        "name": config.name,
        "method": config.method,
        "method_label": METHODS[config.method].label(config),  # what table prints, without importing the method again
        "epochs": config.optim.epochs,
        "selection": "validation",
        "final": final_test,
        "validation": {"final": metrics_of(evaluated[-1]) if evaluated else {}},
    }
    if best is not None:
        results["best"] = best
    results["history"] = history
    return results


def run_results(config: RunConfig, history: list[dict[str, Any]]) -> dict[str, Any]:
    """Final-epoch metrics; the best epoch is reported too but labelled as chosen on the test split."""
    primary = primary_metric(history)
    evaluated = [row for row in history if primary in row]
    final = metrics_of(evaluated[-1])
    best = max(evaluated, key=lambda r: r[primary])
    return {
        "name": config.name,
        "method": config.method,
        "method_label": METHODS[config.method].label(config),  # what table prints, without importing the method again
        "epochs": config.optim.epochs,
        "final": final,
        "best_epoch_selected_on_test_split": {
            "epoch": best["epoch"],
            **metrics_of(best),
        },
        "history": history,
    }
