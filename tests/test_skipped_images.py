"""With ``data.skip_bad_images: true`` a corrupt or empty image is skipped in every epoch, counted in
``log.csv``'s ``skipped_images`` each epoch, and warned about once per run in the CLI's one line (not each
epoch, not by each DataLoader worker, without our source line)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "model.backbone=resnet10t",
    "model.pretrained=false",
    "data.image_size=32",
    "data.normalization=imagenet",
    "optim.epochs=2",
    "optim.warmup_epochs=0",
    "data.classes_per_batch=2",
    "data.images_per_class=2",
    "eval.recall_at=[1,2]",
    "threads=2",
    "data.skip_bad_images=true",
]


def _photos(root: Path) -> Path:
    """4 classes of 4 small JPEGs, but in the first (a training class) one is corrupt and one empty: every
    class has as many, so every image is drawn in every epoch."""
    rng = np.random.default_rng(0)
    for c in range(4):
        (root / f"class {c}").mkdir(parents=True)
        for i in range(2 if c == 0 else 4):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / f"class {c}" / f"{i}.jpg")
    (root / "class 0" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not the rest of a JPEG")
    (root / "class 0" / "empty.jpg").write_bytes(b"")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_skipped_images_are_counted_each_epoch_and_warned_once(tmp_path, workers):
    """Catches: skipped_images 0 in log.csv; the skip warning repeated each epoch or by each worker, or
    showing the internal file:line that raised it."""
    photos, run = _photos(tmp_path / "photos"), tmp_path / "run"
    sets = [arg for item in [*TINY, f"data.num_workers={workers}"] for arg in ("--set", item)]
    argv = ["train", str(ROOT / "recipes" / "folder_source.yaml"), "--root", str(photos), "--out", str(run), *sets]
    done = subprocess.run([sys.executable, "-m", "metrictransfer.cli", *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    skips = [line for line in done.stderr.splitlines() if "skipping unreadable image" in line]
    assert len(skips) == 2, done.stderr  # one for each file, over 2 epochs
    for name, line in zip(("broken.jpg", "empty.jpg"), sorted(skips)):
        assert line.startswith("metrictransfer: warning: skipping unreadable image ") and name in line, line
        assert ".py:" not in line and line.endswith("fix or remove it to use it")
    with open(run / "log.csv", newline="") as f:
        assert [int(row["skipped_images"]) for row in csv.DictReader(f)] == [2, 2]
