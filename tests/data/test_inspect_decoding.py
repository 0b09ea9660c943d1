"""``data inspect`` decodes every listed image as training does, so a truncated, corrupt or refused file is
found before training, named with why, and the exit status and one line say what to do; ``--no-decode``
only lists the files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metrictransfer.cli import main
from metrictransfer.data import inspect


def _photos(root: Path) -> Path:
    """4 classes of 3 small JPEGs: 2 classes train, 2 test."""
    rng = np.random.default_rng(0)
    for c in range(4):
        (root / f"class {c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / f"class {c}" / f"{i}.jpg")
    return root


def _truncated_jpeg() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(out, "JPEG")
    return out.getvalue()[: len(out.getvalue()) // 2]


def test_inspect_decodes_and_names_unreadable_files(tmp_path, capsys):
    """Catches: a truncated JPEG, a file that is no image, and a mode training refuses counted as images."""
    root = _photos(tmp_path / "photos")
    (root / "class 0" / "cut.jpg").write_bytes(_truncated_jpeg())
    (root / "class 2" / "notes.jpg").write_bytes(b"not an image")
    Image.fromarray(np.zeros((4, 4), dtype=np.float32)).save(root / "class 3" / "float.tif")  # mode F: refused
    assert main(["data", "inspect", "--dataset", "folder", "--root", str(root), "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["decoded"] is True
    train, test = report["splits"]["train"], report["splits"]["test"]
    assert train["unreadable_files"] == 1 and train["first_unreadable"][0].startswith("class 0/cut.jpg: image file is truncated")
    assert test["unreadable_files"] == 2
    assert test["first_unreadable"][0] == "class 2/notes.jpg: cannot identify image file"
    assert test["first_unreadable"][1].startswith("class 3/float.tif: Pillow mode 'F'")
    advice = captured.err.strip().splitlines()
    assert len(advice) == 1 and "3 listed files are empty or unreadable" in advice[0] and "data.skip_bad_images: true" in advice[0]

    assert main(["data", "inspect", "--dataset", "folder", "--root", str(root)]) == 1
    text = capsys.readouterr().out
    assert "unreadable" in text.splitlines()[1]  # a column of the table
    assert "1 unreadable files, first: class 0/cut.jpg: image file is truncated" in text
    assert "2 unreadable files, first: class 2/notes.jpg: cannot identify image file; class 3/float.tif" in text


def test_no_decode_only_lists(tmp_path, capsys):
    root = _photos(tmp_path / "photos")
    (root / "class 0" / "cut.jpg").write_bytes(_truncated_jpeg())
    assert main(["data", "inspect", "--dataset", "folder", "--root", str(root), "--no-decode", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["decoded"] is False and report["splits"]["train"]["unreadable_files"] is None
    assert main(["data", "inspect", "--dataset", "folder", "--root", str(root), "--no-decode"]) == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert row.split()[0] == "train" and row.split()[-1] == "-"  # not decoded, not "0"


def test_a_clean_folder_exits_0_without_advice(tmp_path, capsys):
    root = _photos(tmp_path / "photos")
    assert main(["data", "inspect", "--dataset", "folder", "--root", str(root)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.splitlines()[2].split()[-1] == "0"


def test_the_pool_keeps_each_files_answer_in_order(tmp_path, monkeypatch):
    """Catches: answers of a process pool matched to the wrong files."""
    root = _photos(tmp_path / "photos")
    (root / "class 1" / "bad.jpg").write_bytes(b"broken")
    files = sorted(str(p) for p in root.rglob("*.jpg"))
    monkeypatch.setattr(inspect, "usable_cores", lambda: 2)
    monkeypatch.setattr(inspect, "_FILES_PER_WORKER", 1)
    reasons = inspect._decode_all(files, progress=False)
    assert [Path(f).name for f, r in zip(files, reasons) if r is not None] == ["bad.jpg"]


@pytest.mark.parametrize("check_only", [False, True])
def test_checking_decodes_every_byte(tmp_path, check_only):
    """Catches: the fast check (JPEGs at 1/8 scale) passing a truncated file that training fails on."""
    from metrictransfer.data.decode import open_rgb8_raw

    (tmp_path / "cut.jpg").write_bytes(_truncated_jpeg())
    with pytest.raises(OSError, match="truncated"):
        open_rgb8_raw(tmp_path / "cut.jpg", set(), check_only=check_only)
