"""Queries and their nearest gallery images drawn as a grid: one row per query."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from PIL import Image

from metrictransfer.data.images import open_rgb8
from metrictransfer.search.gallery import Neighbour

if TYPE_CHECKING:
    from matplotlib.axes import Axes

SAME, OTHER = "#2ca02c", "#d62728"  # green frame: same class as the query; red: another class


def _open(path: str) -> Image.Image:
    return open_rgb8(path)  # the same faithful decoding as training (16-bit, transparency, bombs)


def draw_grid(
    queries: list[str],
    results: list[list[Neighbour]],
    out: str | Path,
    query_labels: list[str | None] | None = None,
    thumb: float = 1.3,
    load: Callable[[str], Image.Image] = _open,
) -> Path:
    """Write an image (PNG, or the format ``out``'s extension names, whole or not at all): each query,
    then its neighbours nearest first with their distances; frames are green or red when both the
    query's and the neighbour's classes are known. ``load`` turns a path into an image (datasets
    without files name their items otherwise)."""
    import matplotlib.pyplot as plt

    from metrictransfer.engine.logging import figure_format, save_figure  # also selects the Agg backend

    out = Path(out)
    figure_format(out)  # before any work
    query_labels = query_labels or [None] * len(queries)
    columns = 1 + max((len(r) for r in results), default=0)
    fig, axes = plt.subplots(len(queries), columns, figsize=(thumb * columns, thumb * 1.15 * len(queries)), squeeze=False)
    for row, (query, neighbours, label) in enumerate(zip(queries, results, query_labels)):
        _show(axes[row][0], load(query), "query" + (f"\n{label}" if label else ""), None)
        for col in range(1, columns):
            ax = axes[row][col]
            if col - 1 >= len(neighbours):
                ax.axis("off")
                continue
            n = neighbours[col - 1]
            colour = None if label is None or n.label is None else (SAME if n.label == label else OTHER)
            _show(ax, load(n.path), f"{n.distance:.3f}" + (f"\n{n.label}" if n.label else ""), colour)
    fig.tight_layout()
    try:
        save_figure(fig, out, dpi=100)
    finally:
        plt.close(fig)
    return out


def _show(ax: Axes, image: Image.Image, title: str, frame: str | None) -> None:
    ax.imshow(image)
    ax.set_title(title, fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(frame is not None)
        if frame is not None:
            spine.set_edgecolor(frame)
            spine.set_linewidth(4)
