"""Queries and their nearest gallery images drawn as a grid: one row per query.

Each tile names its image (the file name, cut in the middle when long, so the start and the extension
stay), its class when known and, for a neighbour, its distance: a grid is read without the file list."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from PIL import Image

from metrictransfer.data.decode import open_rgb8
from metrictransfer.retrieval.gallery import Neighbour

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SAME, OTHER = "#2ca02c", "#d62728"  # green frame: same class as the query; red: another class
MARK = {SAME: "✓", OTHER: "✗"}  # the frame's verdict in the title too, for readers who cannot tell red from green
FONT_SIZE = 6.5
CHARS_PER_INCH = 13  # DejaVu Sans at FONT_SIZE: a name this long fits one tile's width with room between tiles


def _open(path: str) -> Image.Image:
    return open_rgb8(path)  # the same faithful decoding as training (16-bit, transparency, bombs)


def file_name(path: str) -> str:
    """The last part of ``path``, composed (NFC): a macOS name's "e" + combining accent draws as one "é"."""
    return unicodedata.normalize("NFC", Path(path).name)


def middle_ellipsis(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters with "…" in the middle: a long file name keeps its start and its
    extension, which tell files apart better than either end alone."""
    text = unicodedata.normalize("NFC", text)
    if len(text) <= width:
        return text
    tail = (width - 1) // 2
    return text[: width - 1 - tail] + "…" + text[len(text) - tail :]


def draw_grid(
    queries: list[str],
    results: list[list[Neighbour]],
    out: str | Path,
    query_labels: list[str | None] | None = None,
    thumb: float = 1.3,
    load: Callable[[str], Image.Image] = _open,
    name: Callable[[str], str] = file_name,
) -> Path:
    """Write an image (PNG, or the format ``out``'s extension names, whole or not at all) of
    :func:`grid_figure`."""
    import matplotlib.pyplot as plt

    from metrictransfer.engine.logging import figure_format, save_figure  # also selects the Agg backend

    out = Path(out)
    figure_format(out)  # before any work
    fig = grid_figure(queries, results, query_labels, thumb, load, name)
    try:
        save_figure(fig, out, dpi=100)
    finally:
        plt.close(fig)
    return out


def grid_figure(
    queries: list[str],
    results: list[list[Neighbour]],
    query_labels: list[str | None] | None = None,
    thumb: float = 1.3,
    load: Callable[[str], Image.Image] = _open,
    name: Callable[[str], str] = file_name,
) -> Figure:
    """Each query, then its neighbours nearest first; every tile titled with its file name (``name`` of its
    path: datasets without files name their items otherwise) and class, a neighbour's with its distance.
    Frames are green or red, and distances marked ✓ or ✗, when both the query's and the neighbour's classes
    are known. ``load`` turns a path into an image."""
    import matplotlib.pyplot as plt

    import metrictransfer.engine.logging  # noqa: F401  (selects the Agg backend)

    query_labels = query_labels or [None] * len(queries)
    columns = 1 + max((len(r) for r in results), default=0)
    width = max(8, int(thumb * CHARS_PER_INCH))
    fig, axes = plt.subplots(len(queries), columns, figsize=(thumb * columns, thumb * 1.4 * len(queries)), squeeze=False)
    for row, (query, neighbours, label) in enumerate(zip(queries, results, query_labels)):
        _show(axes[row][0], load(query), ["query", name(query), label], None, width)
        for col in range(1, columns):
            ax = axes[row][col]
            if col - 1 >= len(neighbours):
                ax.axis("off")
                continue
            n = neighbours[col - 1]
            colour = None if label is None or n.label is None else (SAME if n.label == label else OTHER)
            distance = f"{n.distance:.3f}" + (f" {MARK[colour]}" if colour else "")
            _show(ax, load(n.path), [distance, name(n.path), n.label], colour, width)
    fig.tight_layout(pad=0.3, w_pad=0.4, h_pad=0.4)
    return fig


def _show(ax: Axes, image: Image.Image, lines: list[str | None], frame: str | None, width: int) -> None:
    ax.imshow(image)
    ax.set_title("\n".join(middle_ellipsis(line, width) for line in lines if line), fontsize=FONT_SIZE, linespacing=1.1)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(frame is not None)
        if frame is not None:
            spine.set_edgecolor(frame)
            spine.set_linewidth(4)
