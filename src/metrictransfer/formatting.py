"""Metrics as a person reads them. Files and ``--json`` keep fractions (0.873); every printout a person
reads shows percent with one decimal (87.3%), as the reports and ``metrictransfer table`` do, so the
numbers of one run look the same wherever they are read."""

from __future__ import annotations

from collections.abc import Mapping


def percent(fraction: float) -> str:
    """``0.8731`` → ``87.3%``."""
    return f"{100 * fraction:.1f}%"


def metrics_text(metrics: Mapping[str, float], separator: str = "  ") -> str:
    """``recall@1 87.3%  recall@2 91.0%``: each metric by its name, in percent."""
    return separator.join(f"{key} {percent(value)}" for key, value in metrics.items())
