"""A messy folder of real-looking photos, walked through the command line as a new user would: the
own-data guide (inspect, source, transfer, evaluate, index, search), distill and tune. Class names with
spaces and accents, mixed extensions, grayscale, CMYK, transparent PNG, a phone portrait stored sideways
with its EXIF orientation, a nested folder, stray notes and .DS_Store files and a zero-byte JPEG.

Every step must end without a traceback; a held-out or validation set too small for its metric is refused
or warned about, never scored a silent 1.0; the portrait is seen the right way up."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from metrictransfer.cli import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["Café crème", "Thé vert", "Zürich tram", "mug", "lamp", "chair", "bike", "Crème brûlée"]
EXTENSIONS = [".jpg", ".JPG", ".jpeg", ".png", ".webp", ".tif"]
TINY = [
    "model.backbone=resnet10t",
    "model.pretrained=false",
    "model.embedding_dim=16",
    "data.image_size=32",
    "data.normalization=imagenet",
    "data.classes_per_batch=2",
    "data.images_per_class=2",
    "data.skip_bad_images=true",
    "optim.epochs=1",
    "optim.warmup_epochs=0",
    "eval.recall_at=[1,2]",
    "threads=2",
]


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def _portrait() -> Image.Image:
    """An upright portrait (32 × 48): red above, blue below, so sideways it is another picture."""
    pixels = np.zeros((48, 32, 3), np.uint8)
    pixels[:24] = (220, 40, 40)
    pixels[24:] = (40, 40, 220)
    return Image.fromarray(pixels)


def messy_folder(root: Path) -> dict[str, Path]:
    """The folder, and the files the test looks at again."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        colour = rng.integers(30, 225, 3)
        for i in range(6):
            pixels = np.clip(colour + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            extension = EXTENSIONS[(c + i) % len(EXTENSIONS)]
            Image.fromarray(pixels).save(folder / f"photo {i}{extension}")
    grey = np.clip(rng.normal(120, 30, (40, 40)), 0, 255).astype(np.uint8)
    Image.fromarray(grey, "L").save(root / CLASSES[0] / "grey.jpg")
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).convert("CMYK").save(root / CLASSES[1] / "print.jpg")
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[8:32, 8:32] = (200, 120, 30, 255)
    Image.fromarray(rgba, "RGBA").save(root / CLASSES[2] / "cut-out.png")
    portrait = root / CLASSES[3] / "IMG_0001.JPG"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to view; the stored pixels lie sideways
    _portrait().transpose(Image.Transpose.ROTATE_90).save(portrait, quality=95, exif=exif.tobytes())
    (root / CLASSES[4] / "2019" / "trip").mkdir(parents=True)
    Image.fromarray(np.full((40, 40, 3), 60, np.uint8)).save(root / CLASSES[4] / "2019" / "trip" / "nested.jpg")
    for folder in (root, root / CLASSES[5]):
        (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (folder / "notes.txt").write_text("taken in spring\n")
    broken = root / CLASSES[6] / "broken.jpg"
    broken.write_bytes(b"")
    return {"portrait": portrait, "broken": broken}


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, f"{argv[0]}: {err}"
    return status, out, err


def test_a_messy_photo_folder_through_the_guide_distill_and_tune(tmp_path, capsys, recwarn):
    photos = tmp_path / "my photos"
    files = messy_folder(photos)
    runs = tmp_path / "runs"

    # inspect: the zero-byte file is named, with what to do, and the status says something is wrong
    status, out, _ = _run(capsys, ["data", "inspect", "--dataset", "folder", "--root", str(photos)])
    assert status == 1 and "broken.jpg" in out

    # the source: refused while the broken file is there, then trained with it skipped; the failed start
    # leaves nothing that blocks the next
    recipe = str(ROOT / "recipes" / "folder_source.yaml")
    plain = [s for s in TINY if not s.startswith("data.skip_bad_images")]
    source = runs / "my-source"
    status, _, err = _run(capsys, ["train", recipe, "--root", str(photos), "--out", str(source), *_sets(plain)])
    assert status == 2 and "broken.jpg" in err and len(err.strip().splitlines()) <= 3
    status, _, err = _run(capsys, ["train", recipe, "--root", str(photos), "--out", str(source), *_sets(TINY), "--json"])
    assert status == 0, err
    assert err.count("broken.jpg") <= 1  # said once, not at every epoch or evaluation

    # the target, taught by the source, and its evaluation
    target = runs / "my-target"
    transfer = [str(ROOT / "recipes" / "folder_transfer.yaml"), "--root", str(photos), "--out", str(target)]
    status, _, err = _run(capsys, ["train", *transfer, "--set", f"transfer.source_checkpoint={source}", *_sets(TINY), "--json"])
    assert status == 0, err
    status, out, _ = _run(capsys, ["evaluate", "--checkpoint", str(target), "--json"])
    assert status == 0 and 0.0 <= json.loads(out)["recall@1"] <= 1.0

    # index and search (the broken file left out of the gallery); the portrait is found by its upright copy
    files["broken"].unlink()
    index = runs / "index"
    status, _, err = _run(capsys, ["index", "--checkpoint", str(source), "--images", str(photos), "--out", str(index)])
    assert status == 0, err
    upright, sideways = tmp_path / "upright.png", tmp_path / "sideways.png"
    _portrait().save(upright)
    _portrait().transpose(Image.Transpose.ROTATE_90).save(sideways)
    grid = runs / "grid.png"
    argv = ["search", str(upright), str(sideways), "--index", str(index), "--k", "3", "--json", "--grid", str(grid)]
    status, out, _ = _run(capsys, argv)
    assert status == 0 and grid.is_file()
    up, side = json.loads(out)
    assert up["neighbours"][0]["path"] == str(files["portrait"].resolve())
    distance = {n["path"]: n["distance"] for n in side["neighbours"]}
    assert up["neighbours"][0]["distance"] < distance.get(str(files["portrait"].resolve()), np.inf)
    status, out, _ = _run(capsys, ["search", str(files["portrait"]), "--index", str(index), "--k", "3", "--exclude-self", "--json"])
    assert status == 0 and str(files["portrait"].resolve()) not in [n["path"] for n in json.loads(out)[0]["neighbours"]]

    # table reads every kind of run
    status, out, _ = _run(capsys, ["table", str(source), str(target)])
    assert status == 0 and "my-source" in out and "my-target" in out

    # distill: agreement@10 on the few held-out images would be 1.0 whatever the model: refused in one line
    import timm
    import torch

    weights = tmp_path / "teacher.pt"
    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), weights)
    distill = ["distill", "--source", "resnet10t", "--target", "resnet10t", "--dim", "16", "--images", str(photos)]
    distill += ["--source-weights", str(weights), "--source-image-size", "32", "--image-size", "32", "--epochs", "1", "--batch-size", "6"]
    distill += ["--set", "data.skip_bad_images=true"]
    status, _, err = _run(capsys, [*distill, "--out", str(runs / "distill")])
    assert status == 2 and "eval.agreement_at" in err and "data.holdout_images" in err
    assert not (runs / "distill").exists()
    small = ["--set", "data.holdout_images=0.25", "--set", "eval.agreement_at=[1,2]"]
    recwarn.clear()
    status, out, err = _run(capsys, [*distill, "--out", str(runs / "distill"), *small, "--json"])
    assert status == 0, err
    assert any("chance" in str(w.message) for w in recwarn)  # the small held-out set, with its chance level

    # tune: 20 % of 4 training classes validates on one class, where every trial would score 1.0: refused
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"optim.lr": {"type": "log_uniform", "low": 1e-4, "high": 1e-2}}))
    tune = ["tune", recipe, "--space", str(space), "--trials", "2", "--no-prune", "--set", f"data.root={photos}", *_sets(TINY)]
    status, _, err = _run(capsys, [*tune, "--out", str(runs / "tune"), "--set", "data.validation.classes=0.2"])
    assert status == 2 and "data.validation.classes" in err
    recwarn.clear()
    status, out, err = _run(capsys, [*tune, "--out", str(runs / "tune"), "--set", "data.validation.classes=0.5", "--json"])
    assert status == 0, err
    assert any("data.validation.classes" in str(w.message) for w in recwarn)  # two validation classes: small
