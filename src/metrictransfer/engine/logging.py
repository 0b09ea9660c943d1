"""Per-epoch CSV log, Recall@1 and training-curve plots."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # files only, no screen needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from metrictransfer.errors import ConfigError, MissingPackageError  # noqa: E402
from metrictransfer.io import atomic_write, atomic_write_text  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write all rows (the union of their keys, in first-seen order) to a CSV file."""
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(text.getvalue(), path)


def figure_format(path: str | Path) -> str:
    """The format matplotlib writes for ``path``'s extension (png without one); ConfigError otherwise."""
    from matplotlib.backend_bases import FigureCanvasBase

    fmt = Path(path).suffix[1:].lower() or "png"
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise ConfigError(
            f"cannot draw {path}: matplotlib writes no .{fmt} files; use .png (or {', '.join('.' + f for f in sorted(supported))})"
        )
    return fmt


def save_figure(fig: Figure, path: str | Path, **options: Any) -> None:
    """``fig.savefig`` atomically (a plot is rewritten every epoch: a crash must not leave half of one)."""
    fmt = figure_format(path)  # the temporary file's name ends in .partial: matplotlib needs the format
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, **options), "wb")


class TensorBoardLog:
    """Every number of each epoch's log row as a TensorBoard scalar (step: the epoch). Optional: the
    tensorboard package is only needed when ``logging.tensorboard`` is on."""

    def __init__(self, folder: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MissingPackageError("logging.tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(str(folder))

    def write(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def plot_recall(curves: dict[str, list[tuple[int, float]]], path: str | Path, metric: str = "recall@1") -> None:
    """One line per model: ``metric`` (on the test split) against epoch."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, points in curves.items():
        if points:
            epochs, values = zip(*points)
            ax.plot(epochs, values, marker="o", markersize=3, label=name)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"{metric.capitalize()} ({'held-out images' if metric.startswith('agreement@') else 'test split'})")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def primary_metric(history: list[dict[str, Any]]) -> str:
    """The metric that runs are compared by: accuracy for classifiers, Recall@1 for retrieval, and for a
    transfer evaluated without labels its agreement with the source at the smallest k."""
    keys = {k.rsplit("/", 1)[-1] for row in history for k in row}
    if "accuracy" in keys:
        return "accuracy"
    agreements = sorted((k for k in keys if k.startswith("agreement@")), key=lambda k: int(k.split("@")[1]))
    return agreements[0] if agreements and "recall@1" not in keys else "recall@1"


def plot_training(history: list[dict[str, Any]], path: str | Path) -> None:
    """Two panels per epoch: every logged loss (left), and the primary metric of every evaluated model,
    cohort members and ensemble included (right)."""
    losses = [k for k in history[0] if k.endswith("loss")] if history else []
    primary = primary_metric(history)
    curves = sorted({k for row in history for k in row if k.endswith("/" + primary)}) or [primary]  # a cohort: per model
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    for key in losses:
        points = [(row["epoch"], row[key]) for row in history if key in row]
        left.plot(*zip(*points), marker="o", markersize=3, label=key)
    for key in curves:
        points = [(row["epoch"], row[key]) for row in history if key in row]
        right.plot(*zip(*points), marker="o", markersize=3, label=key.rsplit("/", 1)[0] if "/" in key else "model")
    left.set_ylabel("training loss (mean over the epoch)")
    evaluated_on = "held-out images" if primary.startswith("agreement@") else "test split"
    right.set_ylabel(f"{primary.capitalize()} ({evaluated_on})")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
