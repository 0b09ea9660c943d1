"""The offline demo: source model, target alone, target with relaxed-contrastive transfer, on glyphs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metrictransfer.config import RunConfig, build_config
from metrictransfer.engine.logging import plot_recall, write_csv
from metrictransfer.engine.run_folder import holds_run
from metrictransfer.engine.trainer import train
from metrictransfer.io import atomic_write_text
from metrictransfer.output_folder import OutputLock, claim_output
from metrictransfer.report import pick_queries, write_report

# What the demo's transfer buys over the target alone, measured by benchmarks/demo_quality.py on the
# full-length demo (epochs_scale 1, default settings): the difference of the final-epoch test Recall@1
# (fraction) of target_transfer minus target_alone, per seed, summarised. Recomputed from
# benchmarks/results/demo_quality.json by tests/test_demo.py, which fails when the two differ: refresh
# this constant whenever the benchmark is rerun.
DEMO_QUALITY: dict[str, Any] = {"seeds": [0, 1, 2], "mean": 0.0182927, "min": 0.0057165, "max": 0.0266768}

# The three runs of the demo, as configuration overrides of the defaults. The same settings are in
# recipes/glyphs_*.yaml for `metrictransfer train` (a test keeps them equal).
DEMO_DATA = {"dataset": "glyphs", "transform": "glyphs", "image_size": 32, "classes_per_batch": 45, "images_per_class": 2, "views": 2}
DEMO_SOURCE = {
    "method": "source",
    "name": "source",
    "data": DEMO_DATA,
    "model": {"backbone": "resnet18d", "embedding_dim": 128, "normalize": True},
    "metric_loss": {"name": "proxy_anchor"},
    "optim": {"lr": 1e-3, "epochs": 16},
    "eval": {"recall_at": [1, 2, 4, 8], "every": 2},
}
DEMO_TARGET = {
    "data": DEMO_DATA,
    "model": {"backbone": "resnet10t", "embedding_dim": 32},
    "metric_loss": {"name": "proxy_anchor"},
    "optim": {"lr": 1e-3, "epochs": 10},
    "eval": {"recall_at": [1, 2, 4, 8], "every": 2},
}


def demo_configs(out: Path, seed: int = 0, epochs_scale: float = 1.0, overrides: list[str] | None = None) -> dict[str, RunConfig]:
    """The demo's three run configurations; ``epochs_scale`` shortens them (tests, quick looks)."""

    def make(raw: dict[str, Any], name: str, method: str, extra: dict[str, Any] | None = None) -> RunConfig:
        raw = json.loads(json.dumps(raw))  # deep copy
        raw.update({"name": name, "method": method, "seed": seed})
        raw["optim"]["epochs"] = max(1, round(raw["optim"]["epochs"] * epochs_scale))
        raw.update(extra or {})
        return build_config(raw, overrides, origin=f"demo run {name}")

    return {
        "source": make(DEMO_SOURCE, "source", "source"),
        "target_alone": make(DEMO_TARGET, "target_alone", "source"),
        "target_transfer": make(
            DEMO_TARGET,
            "target_transfer",
            "transfer",
            {
                "transfer": {
                    "source_checkpoint": str(out / "source"),
                    "loss": {"name": "relaxed_contrastive", "params": {"sigma": 1.0, "delta": 1.0}},
                }
            },
        ),
    }


DEMO_FILES = ("config.json", "results.json", "log.csv", "recall.png", "report.md")


def run_demo(
    out: str | Path,
    seed: int = 0,
    epochs_scale: float = 1.0,
    overrides: list[str] | None = None,
    progress: bool | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train the three models into ``out/<name>/`` and write the combined results, log and plot. A
    folder holding an earlier demo is refused unless ``overwrite``; it is locked while the demo runs."""
    out = Path(out)
    configs = demo_configs(out, seed, epochs_scale, overrides)  # a bad --set fails before anything is written

    def already_holds(folder: Path) -> str | None:
        earlier = [p.name for p in (folder / n for n in DEMO_FILES) if p.exists()] + [n for n in configs if holds_run(folder / n)]
        if not earlier:
            return None
        return f"{folder} already holds a demo ({', '.join(earlier)}); choose another --out, or add --overwrite to replace it"

    with claim_output(out, "demo", DemoLock(out), overwrite=overwrite, already_holds=already_holds) as lock:
        assert lock.manifest is not None
        for name in configs:  # each model's run folder is a run of its own, claimed by its training
            lock.manifest.record_output(name)
        full_length = epochs_scale == 1 and not overrides
        failed = True
        try:
            summary = _run_demo(out, configs, seed, progress, overwrite, full_length)
            failed = False
            return summary
        finally:
            lock.manifest.record_present(after_failure=failed)


class DemoLock(OutputLock):
    """The lock of a demo's folder while its three runs train."""

    activity = "demo"


def _run_demo(
    out: Path, configs: dict[str, RunConfig], seed: int, progress: bool | None, overwrite: bool, full_length: bool = True
) -> dict[str, Any]:
    atomic_write_text(json.dumps({name: c.model_dump(mode="json") for name, c in configs.items()}, indent=2), out / "config.json")
    results: dict[str, dict[str, Any]] = {}
    queries = pick_queries(next(iter(configs.values())))  # the same test queries in the three reports
    for name, config in configs.items():
        print(
            f"== {name}: {config.method}, {config.model.backbone} {config.model.embedding_dim}-d, {config.optim.epochs} epochs ==",
            flush=True,
        )
        results[name] = train(config, out / name, progress=progress, overwrite=overwrite)
        write_report(out / name, query_items=queries)  # report.md, curves, retrieval grid, embedding map

    rows = [{"model": name, **row} for name, r in results.items() for row in r["history"]]
    write_csv(rows, out / "log.csv")
    plot_recall(
        {name: [(row["epoch"], row["recall@1"]) for row in r["history"] if "recall@1" in row] for name, r in results.items()},
        out / "recall.png",
    )
    summary: dict[str, Any] = {
        "seed": seed,
        "split": "test (held-out classes), final epoch",
        "models": {
            name: {
                "backbone": configs[name].model.backbone,
                "embedding_dim": configs[name].model.embedding_dim,
                "method": configs[name].method,
                **r["final"],
            }
            for name, r in results.items()
        },
    }
    summary["conclusion"] = conclusion(summary["models"], seed, full_length)
    atomic_write_text(json.dumps(summary, indent=2), out / "results.json")
    write_demo_report(out, configs, summary, queries)
    print(format_table(summary["models"]))
    print(summary["conclusion"]["text"])
    print(f"results, configuration, log, plot and report.md in {out}; each model's own report in {out}/NAME/report.md")
    return summary


def _pp(fraction: float) -> str:
    """A difference of fractions in percentage points, signed, as the tables round (one decimal)."""
    return f"{100 * fraction:+.1f}"


def conclusion(models: dict[str, dict[str, Any]], seed: int, full_length: bool = True) -> dict[str, Any]:
    """What the transfer bought in this run (Recall@1 of target_transfer minus target_alone, a fraction)
    next to the benchmark's figures over seeds (:data:`DEMO_QUALITY`), and the line the demo prints."""
    difference = models["target_transfer"]["recall@1"] - models["target_alone"]["recall@1"]
    q = DEMO_QUALITY
    text = (
        f"transfer vs target alone: {_pp(difference)} R@1 (seed {seed}); over {len(q['seeds'])} seeds on this demo: "
        f"mean {_pp(q['mean'])}, range {_pp(q['min'])} to {_pp(q['max'])} (benchmarks/demo_quality.py)"
    )
    if not full_length:
        text += "\n(this run is shortened or changed by --set; the mean and range are of the full-length default demo)"
    return {
        "metric": "recall@1",
        "transfer_minus_alone": difference,
        "seed": seed,
        "benchmark": {**q, "script": "benchmarks/demo_quality.py", "full_length_default_demo": True},
        "comparable_to_benchmark": full_length,
        "text": text,
    }


def format_table(models: dict[str, dict[str, Any]]) -> str:
    """The models' Recall@K in percent, one decimal, as ``metrictransfer table`` and the reports write it."""
    ks = [k for k in next(iter(models.values())) if k.startswith("recall@")]
    header = f"| {'model':<16} | {'backbone':<10} | {'dim':>4} | " + " | ".join(f"{k.replace('recall@', 'R@'):>5}" for k in ks) + " |"
    lines = [header, "|---|---|---:|" + "---:|" * len(ks)]
    for name, m in models.items():
        cells = " | ".join(f"{100 * m[k]:>5.1f}" for k in ks)
        lines.append(f"| {name:<16} | {m['backbone']:<10} | {m['embedding_dim']:>4} | {cells} |")
    return "\n".join(lines)


def write_demo_report(out: Path, configs: dict[str, RunConfig], summary: dict[str, Any], queries: list[int]) -> Path:
    """``out/report.md``: the three models side by side (metrics in percent, the conclusion, each model's
    curves, and the retrieval grids its own report drew for the same test queries); reuses their images."""
    names = list(configs)
    sections = [
        "# Demo: source, target alone, target with transfer",
        "",
        f"Glyphs, seed {summary['seed']}; {summary['split']}. Recall@K in percent.",
        "",
        "## Final metrics",
        "",
        "| model | method | backbone | dim | epochs | "
        + " | ".join(k.replace("recall@", "R@") for k in summary["models"][names[0]] if k.startswith("recall@"))
        + " |",
        "|---|---|---|---:|---:|" + "---:|" * sum(k.startswith("recall@") for k in summary["models"][names[0]]),
    ]
    for name in names:
        m, c = summary["models"][name], configs[name]
        cells = " | ".join(f"{100 * v:.1f}" for k, v in m.items() if k.startswith("recall@"))
        sections.append(
            f"| [{name}]({name}/report.md) | {c.method} | {c.model.backbone} | {c.model.embedding_dim} | {c.optim.epochs} | {cells} |"
        )
    sections += [
        "",
        *summary["conclusion"]["text"].split("\n"),
        "",
        "## Training curves",
        "",
        "| " + " | ".join(names) + " |",
        "|" + "---|" * len(names),
        "| " + " | ".join(f"![{name} curves]({name}/curves.png)" for name in names) + " |",
        "",
        "Recall@1 of the three per epoch:",
        "",
        "![Recall@1 per epoch](recall.png)",
        "",
        "## Retrieval: the same test queries for each model",
        "",
        f"Query items (test split): {', '.join(map(str, queries))}; each row a query, then its nearest test "
        "images, nearest first; green: same class, red: another class.",
        "",
    ]
    for name in names:
        sections += [f"### {name}", "", f"![{name} retrieval]({name}/retrieval.png)", ""]
    path = out / "report.md"
    atomic_write_text("\n".join(sections), path)
    return path
