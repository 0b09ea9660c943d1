"""What several test modules share, imported as ``from tests.helpers import TINY`` (pyproject's
``pythonpath = ["."]`` puts the repository root on the path): the tiny run they train, a snapshot of a
folder's bytes to show that nothing outside the tool's own files changed, a model checkpoint for search and
export, and the figures a command saves. (A helper module, not a test: pytest collects only ``test_*.py``.)"""

from __future__ import annotations

import copy
import hashlib
import re
import unicodedata
from pathlib import Path
from typing import Any

# 4 glyph classes, one epoch of 22 steps of a tiny ResNet: a finished run in a few seconds.
TINY: dict[str, Any] = {
    "name": "tiny",
    "data": {"num_classes": 4, "classes_per_batch": 4, "images_per_class": 2, "views": 2, "image_size": 32},
    "model": {"backbone": "resnet10t", "embedding_dim": 16},
    "optim": {"lr": 1e-3, "epochs": 1},
    "eval": {"recall_at": [1, 2], "every": 0},
    "checkpoint": {"every_steps": 10, "keep": 3},
    "threads": 2,
}
STEPS_PER_EPOCH = 22  # TINY's 4 classes × 44 training images, 4 × 2 per batch


def tiny(*dropped: str, **sections: Any) -> dict[str, Any]:
    """A deep copy of TINY without the top-level keys ``dropped`` and with ``sections`` in place of its own
    (``tiny("checkpoint", optim={"lr": 1e-3, "epochs": 2})``)."""
    raw = {key: copy.deepcopy(value) for key, value in TINY.items() if key not in dropped}
    raw.update(copy.deepcopy(sections))
    return raw


def snapshot(folder: Path, folders: bool = False, ignored: tuple[str, ...] = (".lock",)) -> dict[str, str]:
    """Every file under ``folder`` → SHA-256 of its bytes, but those named in ``ignored`` (a lock records who
    locked the folder last); with ``folders``, every folder too, so a new empty one shows."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(folder.rglob("*"))
        if (p.is_file() or (folders and p.is_dir())) and p.name not in ignored
    }


# --------------------------------------------------------------------------------------- search, export

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def coloured_gallery(folder: Path, images: int = 4) -> Path:
    """``folder/<colour>/<i>.png``: each class a colour, each image that colour with noise (40 × 40)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (folder / name).mkdir(parents=True)
        for i in range(images):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")
    return folder


def make_checkpoint(path: Path, seed: int = 0, dim: int = 8) -> Path:
    """A run's checkpoint as training leaves it (untrained weights: search needs no particular quality)."""
    import torch

    from metrictransfer.config import build_config
    from metrictransfer.models import EmbeddingModel
    from metrictransfer.runtime.checkpoint import save_embedding_model

    torch.manual_seed(seed)
    raw = {"model": {"backbone": "resnet10t", "embedding_dim": dim}, "data": {"image_size": 32}}
    return save_embedding_model(EmbeddingModel("resnet10t", dim), build_config(raw), path)


# ------------------------------------------------------------------------------------------------ figures


def figure_texts(fig) -> list[str]:
    """Every text a figure draws: its own, and each axes' title, texts and legend."""
    texts = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        texts += [ax.get_title(), *(t.get_text() for t in ax.texts)]
        legend = ax.get_legend()
        if legend is not None:
            texts += [legend.get_title().get_text(), *(t.get_text() for t in legend.get_texts())]
    return texts


def saved_figures(monkeypatch, *modules) -> list:
    """The figures saved from now on (through save_figure of engine.logging, or of ``modules`` that imported
    it), kept with their texts after the code that drew them closes them."""
    from metrictransfer.engine import logging

    saved = []
    original = logging.save_figure

    def keep(fig, path, **options):
        saved.append(fig)
        original(fig, path, **options)

    for module in (logging, *modules):
        monkeypatch.setattr(module, "save_figure", keep)
    return saved


# ------------------------------------------------------------------------------------------ docs' links

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", flags=re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """The anchor mkdocs (Python-Markdown's toc) gives a heading; ``{#name}`` at its end names it."""
    named = re.search(r"\{\s*#([\w-]+)[^}]*\}\s*$", heading)
    if named:
        return named.group(1)
    text = re.sub(r"`|\*|\[|\]\([^)]*\)", "", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(page: Path) -> set[str]:
    """The #anchors a Markdown page's headings give (headings inside code blocks are not headings)."""
    text = FENCE.sub("", page.read_text())
    return {slug(heading) for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def broken_links(page: Path) -> list[str]:
    """The relative links of a Markdown page (outside code blocks) whose file does not exist, or whose #anchor
    is no heading of the page it names, as ``page: link``; web and mail links are not followed."""
    broken = []
    for link in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-zA-Z][\w+.-]*:", link):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path) if path else page
        if not target.exists():
            broken.append(f"{page.name}: {link} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{page.name}: {link} (no heading for #{anchor})")
    return broken
