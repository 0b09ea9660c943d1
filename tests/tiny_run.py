"""What the tests of bad inputs and of nothing lost share: the tiny run they train, and a snapshot of a
folder's bytes to show that nothing outside the tool's own files changed. (A helper module, not a test:
the test files beside it import it.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

# 4 glyph classes, one epoch of 22 steps of a tiny ResNet: a finished run in a few seconds.
TINY = {
    "name": "tiny",
    "data": {"num_classes": 4, "classes_per_batch": 4, "images_per_class": 2, "views": 2, "image_size": 32},
    "model": {"backbone": "resnet10t", "embedding_dim": 16},
    "optim": {"lr": 1e-3, "epochs": 1},
    "eval": {"recall_at": [1, 2], "every": 0},
    "checkpoint": {"every_steps": 10, "keep": 3},
    "threads": 2,
}


def snapshot(folder: Path, folders: bool = False, ignored: tuple[str, ...] = (".lock",)) -> dict[str, str]:
    """Every file under ``folder`` → SHA-256 of its bytes, but those named in ``ignored`` (a lock records who
    locked the folder last); with ``folders``, every folder too, so a new empty one shows."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for p in sorted(folder.rglob("*"))
        if (p.is_file() or (folders and p.is_dir())) and p.name not in ignored
    }
