"""Results of several runs gathered into one markdown table (``metrictransfer table``), seeds averaged."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, cast

from metrictransfer.config import RESUMABLE_KEYS, RunConfig, config_to_dict, load_run_config
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


def collect_runs(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """One record per finished run: dataset, model, method label, the source it learned from (a timm name or
    the source run's folder name; None without one), seed, final metrics, and its row: ``group_key`` (see
    :func:`group_key`) and ``group``, the label that names the row: the method and the few settings that
    tell it apart from rows of the same dataset, model and method, shortened
    (``relaxed_contrastive (epochs=16)``). Folders of runs expand to their runs (:func:`expand_runs`). Two
    runs of one setting with the same seed are refused: averaging them would count one seed twice."""
    records = []
    for run in expand_runs(run_dirs):
        results = read_results(run)
        config_file = run / "config.yaml"
        if not config_file.is_file():
            raise MissingFileError(f"{run} has results.json but no config.yaml: not a run folder metrictransfer wrote")
        config = load_run_config(config_file)
        records.append(
            {
                "run": str(run),
                "dataset": config.data.dataset,
                "model": f"{config.model.backbone} {config.model.embedding_dim}-d",
                "method": results.get("method_label") or method_label(config),
                "source": _source_name(config),
                "seed": config.seed,
                "metrics": results["final"],
                "group_key": group_key(config),
            }
        )
    _label_groups(records)
    return records


def _source_name(config: RunConfig) -> str | None:
    """What a transfer learned from, as a person names it: the timm model, or the source run's folder.
    Read from the recorded section as it is stored (the transfer method, and torch, stay unimported)."""
    if config.method != "transfer":
        return None
    section = config.method_section
    if isinstance(section.get("source"), dict):
        return str(section["source"].get("name"))
    if section.get("source_checkpoint"):
        path = Path(section["source_checkpoint"])
        return (path.parent if path.suffix else path).name
    return "source embeddings" if section.get("source_embeddings") else None


#: The most settings a row's label names, and the longest its method cell gets: a table read at a glance.
MAX_SETTINGS = 3
MAX_LABEL = 80
#: Key endings too vague alone (``name=pkt``): such a key keeps its section (``loss.name=pkt``).
VAGUE = {"name", "every", "root", "dataset", "data", "weights", "params", "weight", "source", "loss", "pretrained", "features"}
#: Settings a column of their own shows (the teacher).
SHOWN_APART = {"transfer.source.name"}
_MISSING = object()


def _setting(key: dict[str, Any], name: str) -> Any:
    """A flattened key's value, or the whole section under ``name`` (a dict), or _MISSING."""
    if name in key:
        return key[name]
    section = {k[len(name) + 1 :]: v for k, v in key.items() if k.startswith(name + ".")}
    return section or _MISSING


def _differing(keys: list[dict[str, Any]]) -> list[str]:
    """The settings whose values differ between rows. A section set in one row and null in another
    (``eval.data``) is one setting, not one per key inside it."""
    names: set[str] = set()
    for k in {k for key in keys for k in key}:
        parts = k.split(".")
        null = [".".join(parts[:i]) for i in range(1, len(parts)) if any(key.get(".".join(parts[:i]), 0) is None for key in keys)]
        names.add(null[0] if null else k)
    names -= SHOWN_APART
    return sorted(n for n in names if len({json.dumps(_setting(key, n), default=str) for key in keys}) > 1)


def _short_key(name: str, names: list[str]) -> str:
    """The key's last part (``optim.epochs`` → ``epochs``), with its section when that part is vague
    (``eval.every``), and whole when another shown key ends the same."""
    parts = name.split(".")
    if sum(n.split(".")[-1] == parts[-1] for n in names) > 1:
        return name
    return ".".join(parts[-2:]) if parts[-1] in VAGUE else parts[-1]


def _short_value(value: Any) -> str:
    """A value as a table cell shows it: a path by its last part, a float in few digits, at most 24 characters."""
    if isinstance(value, dict):  # a section that is null in another row: named by what it holds
        text = str(value.get("name") or value.get("dataset") or "set")
    elif value is None:
        text = "none"
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, str) and "/" in value:  # a path: its end tells it apart (photos1, photos2)
        name = Path(value).name
        return name if len(name) <= 24 else "…" + name[-23:]
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, separators=(",", ":"))
    return _shorten(text, 24)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _row_label(base: str, key: dict[str, Any], differing: list[str]) -> str:
    """``base`` and, in parentheses, the first few differing settings this row has (a setting it lacks is
    left out), as many as fit in :data:`MAX_LABEL` characters, and how many more there are."""
    shown = [(n, v) for n in differing if (v := _setting(key, n)) is not _MISSING]
    names = [n for n, _ in shown]
    cells = [f"{_short_key(n, names)}={_short_value(v)}" for n, v in shown]

    def label(kept: list[str]) -> str:
        more = [f"+{len(cells) - len(kept)} more"] if len(kept) < len(cells) else []
        return f"{base} ({', '.join(kept + more)})" if cells else base

    kept: list[str] = []
    for cell in cells[:MAX_SETTINGS]:
        if len(label([*kept, cell])) > MAX_LABEL:
            break
        kept.append(cell)
    return _shorten(label(kept), MAX_LABEL)


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
        by_label.setdefault(_row_of(group), []).append(group[0]["group_key"])
    for group in groups.values():
        keys = by_label[_row_of(group)]
        label = _row_label(group[0]["method"], group[0]["group_key"], _differing(keys) if len(keys) > 1 else [])
        for record in group:
            record["group"] = label


def _row_of(group: list[dict[str, Any]]) -> tuple[str, str, str]:
    """What the columns before the method cell show: rows that share it are told apart by their settings."""
    first = group[0]
    return first["dataset"], first["model"], first["method"]


def _teacher(group: list[dict[str, Any]]) -> str:
    """The sources the row's runs learned from (each seed may have its own source run), or – for none."""
    return _shorten(", ".join(sorted({r["source"] for r in group if r["source"]})) or "–", 32)


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


def default_metrics(records: list[dict[str, Any]]) -> list[str]:
    """The metrics each run has: every recall@k, and for a run without any (a transfer evaluated without
    labels) its agreement@k, or all its metrics when it has neither."""
    shown: list[str] = []
    for record in records:
        recalls = [k for k in record["metrics"] if k.startswith("recall@")]
        agreements = [k for k in record["metrics"] if k.startswith("agreement@")]
        shown += recalls or agreements or list(record["metrics"])
    return sorted(dict.fromkeys(shown), key=lambda k: (not k.startswith("recall@"), not k.startswith("agreement@")))


def run_names(runs: list[str]) -> dict[str, str]:
    """Each run folder by its name, or with its parent's when two runs' names are the same (a/run, b/run)."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[Path(run).name] = counts.get(Path(run).name, 0) + 1
    return {run: Path(run).name if counts[Path(run).name] == 1 else "/".join(Path(run).parts[-2:]) for run in runs}


def markdown_table(records: list[dict[str, Any]], metrics: list[str] | None = None) -> str:
    """Rows: one per setting (:func:`collect_runs`'s ``group_key``) in first-seen order, named by the run
    folders, dataset, model, the teacher it learned from and ``group``; its seeds averaged (mean ± std, in
    percent), with their number ``n`` and the seeds. Default columns: :func:`default_metrics`."""
    if not records:
        raise ConfigError("no runs to tabulate")
    check_metrics(records, metrics)
    metrics = metrics or default_metrics(records)
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(json.dumps(record["group_key"], sort_keys=True), []).append(record)
    names = run_names([r["run"] for r in records])
    lines = [
        "| run | dataset | model | teacher | method | n | seeds | " + " | ".join(m.replace("recall@", "R@") for m in metrics) + " |",
        "|---|---|---|---|---|---:|---|" + "---:|" * len(metrics),
    ]
    for group in groups.values():
        first = group[0]
        cells = []
        for m in metrics:
            values = [r["metrics"][m] for r in group if m in r["metrics"]]
            cells.append(_mean_std(values) if values else "–")
        seeds = ", ".join(str(s) for s in sorted(r["seed"] for r in group))
        runs = _shorten(", ".join(names[r["run"]] for r in group), 40)
        row = [runs, first["dataset"], first["model"], _teacher(group), first["group"], str(len(group)), seeds, *cells]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
