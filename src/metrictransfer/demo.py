"""The offline demo: source model, target alone, target with relaxed-contrastive transfer, on glyphs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metrictransfer.config import RunConfig, build_config
from metrictransfer.engine.logging import plot_recall, write_csv
from metrictransfer.engine.run_folder import RunLock, holds_run
from metrictransfer.engine.trainer import train
from metrictransfer.errors import RunExistsError
from metrictransfer.io import atomic_write_text
from metrictransfer.report import write_report

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
    "eval": {"recall_at": [1, 2, 4, 8]},
}
DEMO_TARGET = {
    "data": DEMO_DATA,
    "model": {"backbone": "resnet10t", "embedding_dim": 32},
    "metric_loss": {"name": "proxy_anchor"},
    "optim": {"lr": 1e-3, "epochs": 10},
    "eval": {"recall_at": [1, 2, 4, 8]},
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


DEMO_FILES = ("config.json", "results.json", "log.csv", "recall.png")


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
    with RunLock(out):
        earlier = [p.name for p in (out / n for n in DEMO_FILES) if p.exists()] + [n for n in configs if holds_run(out / n)]
        if earlier and not overwrite:
            raise RunExistsError(
                f"{out} already holds a demo ({', '.join(earlier)}); choose another --out, or add --overwrite to replace it"
            )
        return _run_demo(out, configs, seed, progress, overwrite)


def _run_demo(out: Path, configs: dict[str, RunConfig], seed: int, progress: bool | None, overwrite: bool) -> dict[str, Any]:
    atomic_write_text(json.dumps({name: c.model_dump(mode="json") for name, c in configs.items()}, indent=2), out / "config.json")
    results: dict[str, dict[str, Any]] = {}
    for name, config in configs.items():
        print(
            f"== {name}: {config.method}, {config.model.backbone} {config.model.embedding_dim}-d, {config.optim.epochs} epochs ==",
            flush=True,
        )
        results[name] = train(config, out / name, progress=progress, overwrite=overwrite)
        write_report(out / name)  # report.md, curves, retrieval grid, embedding map

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
    atomic_write_text(json.dumps(summary, indent=2), out / "results.json")
    print(format_table(summary["models"]))
    print(f"results, configuration, log and plot in {out}; each model's report in {out}/NAME/report.md")
    return summary


def format_table(models: dict[str, dict[str, Any]]) -> str:
    ks = [k for k in next(iter(models.values())) if k.startswith("recall@")]
    header = f"| {'model':<16} | {'backbone':<10} | {'dim':>4} | " + " | ".join(f"{k:>9}" for k in ks) + " |"
    lines = [header, "|" + "---|" * (3 + len(ks))]
    for name, m in models.items():
        lines.append(f"| {name:<16} | {m['backbone']:<10} | {m['embedding_dim']:>4} | " + " | ".join(f"{m[k]:>9.4f}" for k in ks) + " |")
    return "\n".join(lines)
