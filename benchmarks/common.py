"""Helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this folder is on sys.path)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def mean_std(values: list[float]) -> str:
    """Fractions as percent: "mean ± std" over seeds, or the single value."""
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def train_once(raw: dict, out: Path, origin: str) -> dict:
    """Train one configuration into ``out`` unless it already finished there (its results.json exists),
    so that an interrupted benchmark resumes where it stopped."""
    from metrictransfer.config import build_config
    from metrictransfer.engine.trainer import train

    done = out / "results.json"
    if done.is_file():
        return json.loads(done.read_text())
    print(f"== {out}", flush=True)
    return train(build_config(raw, origin=f"{origin} {out}"), out, progress=False)
