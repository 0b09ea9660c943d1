"""Results of several runs gathered into one markdown table (``metrictransfer table``), seeds averaged."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import yaml

from metrictransfer.config import build_config
from metrictransfer.errors import ConfigError, MissingFileError
from metrictransfer.registry import METHODS


def method_label(config) -> str:
    """How the paper's tables name a run: each method says it (:meth:`Method.label`)."""
    return METHODS[config.method].label(config)


def collect_runs(run_dirs: list[str | Path]) -> list[dict]:
    """One record per finished run: dataset, target model, method label, seed and final metrics."""
    records = []
    for run in run_dirs:
        run = Path(run)
        results_file = run / "results.json"
        if not results_file.is_file():
            raise MissingFileError(f"{run} has no results.json: not a finished run folder")
        results = json.loads(results_file.read_text())
        config_file = run / "config.yaml"
        config = build_config(yaml.safe_load(config_file.read_text()), origin=str(config_file))
        records.append({
            "run": str(run),
            "dataset": config.data.dataset,
            "model": f"{config.model.backbone} {config.model.embedding_dim}-d",
            "method": method_label(config),
            "seed": config.seed,
            "metrics": results["final"],
        })
    return records


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def markdown_table(records: list[dict], metrics: list[str] | None = None) -> str:
    """Rows: (dataset, model, method) in first-seen order; seeds of the same row averaged (mean ± std)."""
    if not records:
        raise ConfigError("no runs to tabulate")
    metrics = metrics or [k for k in records[0]["metrics"] if k.startswith("recall@")]
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((record["dataset"], record["model"], record["method"]), []).append(record)
    lines = ["| dataset | target | method | seeds | " + " | ".join(m.replace("recall@", "R@") for m in metrics) + " |",
             "|---|---|---|---:|" + "---:|" * len(metrics)]
    for (dataset, model, method), group in groups.items():
        cells = []
        for m in metrics:
            values = [r["metrics"][m] for r in group if m in r["metrics"]]
            cells.append(_mean_std(values) if values else "–")
        lines.append(f"| {dataset} | {model} | {method} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
