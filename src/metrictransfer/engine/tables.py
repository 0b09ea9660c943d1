"""Results of several runs gathered into one markdown table (``metrictransfer table``), seeds averaged."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, cast

from metrictransfer.config import RESUMABLE_KEYS, RunConfig, config_to_dict, load_config
from metrictransfer.errors import ConfigError, MissingFileError
from metrictransfer.readback import read_results
from metrictransfer.registry import METHODS

# Keys that do not make two runs different settings: the seed (rows average over it), the run's name,
# the run-time keys a run may be resumed with (RESUMABLE_KEYS), and the paths to a source run, which
# differ between seeds only because each seed's target learns from that seed's own source run.
NOT_GROUPED = ("seed", "name", *RESUMABLE_KEYS, "transfer.source_checkpoint", "classifier.source_checkpoint")


def method_label(config: RunConfig) -> str:
    """How the paper's tables name a run: each method says it (:meth:`Method.label`)."""
    return cast(str, METHODS[config.method].label(config))


def _is_run(folder: Path) -> bool:
    return (folder / "results.json").is_file() and (folder / "config.yaml").is_file()


def expand_runs(paths: list[str | Path]) -> list[Path]:
    """Each argument that is a run folder (results.json and config.yaml), or the run folders one level
    inside a folder of runs (a demo's, a study's), in sorted order; the same folder named twice counts once."""
    runs: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise MissingFileError(f"{path} does not exist: give finished run folders or folders that hold them")
        if _is_run(path):
            found = [path]
        else:
            found = sorted(p for p in path.iterdir() if p.is_dir() and (p / "results.json").is_file()) if path.is_dir() else []
            if not found:
                what = "has results.json but no config.yaml" if (path / "results.json").is_file() else "has no results.json"
                raise MissingFileError(
                    f"{path} {what} and holds no run folders (subfolders with results.json): not a finished run folder nor a folder of runs"
                )
        for run in found:
            if all(run.resolve() != r.resolve() for r in runs):
                runs.append(run)
    return runs


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def group_key(config: RunConfig) -> dict[str, Any]:
    """The run's full configuration, flattened (``optim.epochs``: 16), without the keys in
    :data:`NOT_GROUPED`: the seed, the name, the run-time keys that do not change results, and
    ``transfer.source_checkpoint`` / ``classifier.source_checkpoint`` (each seed points at its own
    source run). Runs with equal keys are seeds of one setting; any other difference is another row."""
    return {k: v for k, v in sorted(_flat(config_to_dict(config)).items()) if not any(k == r or k.startswith(r + ".") for r in NOT_GROUPED)}


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def collect_runs(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """One record per finished run: dataset, target model, method label, seed, final metrics, and its
    row: ``group_key`` (see :func:`group_key`) and ``group``, the method label that names the row, with
    the keys that tell it apart from rows of the same dataset, target and method (``relaxed_contrastive
    (optim.epochs=16)``). Folders of runs expand to their runs (:func:`expand_runs`). Two runs of one
    setting with the same seed are refused: averaging them would count one seed twice."""
    records = []
    for run in expand_runs(run_dirs):
        results = read_results(run)
        config_file = run / "config.yaml"
        if not config_file.is_file():
            raise MissingFileError(f"{run} has results.json but no config.yaml: not a run folder metrictransfer wrote")
        config = load_config(config_file)
        records.append(
            {
                "run": str(run),
                "dataset": config.data.dataset,
                "model": f"{config.model.backbone} {config.model.embedding_dim}-d",
                "method": method_label(config),
                "seed": config.seed,
                "metrics": results["final"],
                "group_key": group_key(config),
            }
        )
    _label_groups(records)
    return records


def _label_groups(records: list[dict[str, Any]]) -> None:
    """Set each record's ``group``; refuse a seed repeated within a group."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(json.dumps(record["group_key"], sort_keys=True), []).append(record)
    for group in groups.values():
        seen: dict[int, str] = {}
        for record in group:
            if record["seed"] in seen:
                raise ConfigError(
                    f"{seen[record['seed']]} and {record['run']} are the same configuration with the same seed "
                    f"{record['seed']}: give only one of them (or runs of different seeds)"
                )
            seen[record["seed"]] = record["run"]
    by_label: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for group in groups.values():
        first = group[0]
        by_label.setdefault((first["dataset"], first["model"], first["method"]), []).append(first["group_key"])
    for group in groups.values():
        first = group[0]
        keys = by_label[(first["dataset"], first["model"], first["method"])]
        differing = sorted({k for key in keys for k in key} if len(keys) > 1 else ())
        differing = [k for k in differing if len({_value(key.get(k, "(unset)")) for key in keys}) > 1]
        label = first["method"]
        if differing:
            label += " (" + ", ".join(f"{k}={_value(first['group_key'].get(k, '(unset)'))}" for k in differing) + ")"
        for record in group:
            record["group"] = label


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def check_metrics(records: list[dict[str, Any]], metrics: list[str] | None) -> None:
    """Refuse a metric name that no run has among its final metrics, listing those they have."""
    available = list(dict.fromkeys(k for r in records for k in r["metrics"]))
    unknown = [m for m in metrics or [] if m not in available]
    if unknown:
        raise ConfigError(
            f"--metrics: no run has {', '.join(map(repr, unknown))}; their final metrics are: {', '.join(available) or '(none)'}"
        )


def markdown_table(records: list[dict[str, Any]], metrics: list[str] | None = None) -> str:
    """Rows: one per setting (:func:`collect_runs`'s ``group_key``) in first-seen order, labelled by
    dataset, target and ``group``; its seeds averaged (mean ± std, in percent), with their number ``n``
    and the seeds. Default columns: every recall@k (every metric when the runs have none)."""
    if not records:
        raise ConfigError("no runs to tabulate")
    check_metrics(records, metrics)
    available = list(dict.fromkeys(k for r in records for k in r["metrics"]))
    metrics = metrics or [k for k in available if k.startswith("recall@")] or available
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(json.dumps(record["group_key"], sort_keys=True), []).append(record)
    lines = [
        "| dataset | target | method | n | seeds | " + " | ".join(m.replace("recall@", "R@") for m in metrics) + " |",
        "|---|---|---|---:|---|" + "---:|" * len(metrics),
    ]
    for group in groups.values():
        first = group[0]
        cells = []
        for m in metrics:
            values = [r["metrics"][m] for r in group if m in r["metrics"]]
            cells.append(_mean_std(values) if values else "–")
        seeds = ", ".join(str(s) for s in sorted(r["seed"] for r in group))
        lines.append(f"| {first['dataset']} | {first['model']} | {first['group']} | {len(group)} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
