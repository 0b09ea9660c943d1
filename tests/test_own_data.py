"""Own data is first-class: the photo recipes validate on a user's folder, the defaults follow the dataset
(glyphs: the demo's 32 px glyph transform; anything else: the papers' photo transform at 224 px), a batch
the training split cannot fill is refused before any model is built, ``data inspect`` names each split's
classes, ``train --root`` is ``--set data.root``, and the own-data guide runs end to end."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metrictransfer.cli import main
from metrictransfer.config import DataConfig, build_config, config_to_dict, load_config
from metrictransfer.data.sampler import ClassBalancedBatchSampler, check_batch_fits
from metrictransfer.engine import trainer
from metrictransfer.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PHOTO_RECIPES = ["folder_source.yaml", "folder_transfer.yaml", "csv_source.yaml"]
# what makes a photo recipe tiny: the guide's overrides for its end-to-end walk
TINY = [
    "model.backbone=resnet10t",
    "model.pretrained=false",
    "data.image_size=32",
    "data.normalization=imagenet",
    "optim.epochs=1",
    "optim.warmup_epochs=0",
    "data.classes_per_batch=3",
    "data.images_per_class=2",
    "data.num_workers=0",
    "eval.recall_at=[1,2]",
    "threads=2",
]


def _photos(root: Path, classes: int = 6, images: int = 6, size: int = 40) -> Path:
    """``root/class_k/i.jpg``: each class a colour, each image that colour with noise."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c:02d}").mkdir(parents=True)
        colour = rng.integers(30, 225, 3)
        for i in range(images):
            pixels = np.clip(colour + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c:02d}" / f"{i}.jpg", quality=90)
    return root


def _csv(photos: Path) -> Path:
    rows = ["path,label"] + [f"{p.relative_to(photos).as_posix()},{p.parent.name}" for p in sorted(photos.glob("*/*.jpg"))]
    (photos / "list.csv").write_text("\n".join(rows) + "\n")
    return photos / "list.csv"


def _run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(argv)
    return status, out.getvalue()


# ---------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("recipe", PHOTO_RECIPES)
def test_photo_recipes_validate_on_a_folder(tmp_path, recipe):
    photos = _photos(tmp_path / "photos", classes=4, images=2, size=16)
    root = _csv(photos) if recipe.startswith("csv") else photos
    config = load_config(ROOT / "recipes" / recipe, [f"data.root={root}", "model.pretrained=false"])
    assert (config.data.transform, config.data.image_size) == ("paper", 224)
    assert config.data.classes_per_batch * config.data.images_per_class <= 64
    assert config.model.backbone in ("resnet50.tv_in1k", "resnet18.tv_in1k")
    header = (ROOT / "recipes" / recipe).read_text()
    assert f"metrictransfer train recipes/{recipe}" in header and "model.weights" in header


# ------------------------------------------------------------------------------- data-led defaults


def test_defaults_follow_the_dataset_and_the_stored_configuration_says_them(tmp_path):
    assert (DataConfig().transform, DataConfig().image_size) == ("glyphs", 32)
    photos = DataConfig(dataset="folder", root="photos")
    assert (photos.transform, photos.image_size) == ("paper", 224)
    assert DataConfig(dataset="csv", root="a.csv", image_size=64).image_size == 64
    assert DataConfig(dataset="cub", root="c").transform == "paper"
    assert DataConfig(dataset="folder", root="p", transform="glyphs").transform == "glyphs"
    stored = config_to_dict(build_config({"data": {"dataset": "folder", "root": "photos"}}))
    assert (stored["data"]["transform"], stored["data"]["image_size"]) == ("paper", 224)
    # eval.data preprocesses as the model was trained unless it says otherwise
    run = build_config(
        {
            "data": {"dataset": "unlabelled", "root": "u", "image_size": 64},
            "method": "selfsup",
            "eval": {"data": {"dataset": "folder", "root": "p"}},
        }
    )
    assert run.eval.data is not None and (run.eval.data.transform, run.eval.data.image_size) == ("paper", 64)


# ------------------------------------------------------------------------------ batch that fits


def test_a_batch_the_split_cannot_fill_names_the_largest_that_fits():
    labels = np.repeat(np.arange(5), [6, 6, 6, 3, 2])  # 5 classes: three of 6 images, one of 3, one of 2
    check_batch_fits(5, 2, labels)
    with pytest.raises(ConfigError) as too_many:
        check_batch_fits(16, 4, labels)
    message = str(too_many.value)
    assert "\n" not in message
    for part in (
        "data.classes_per_batch=16",
        "data.images_per_class=4",
        "5 classes",
        "smallest with 2 images",
        "data.classes_per_batch=3 with data.images_per_class=4",
        "data.classes_per_batch=5 with data.images_per_class=2",
    ):
        assert part in message
    with pytest.raises(ConfigError, match="data.classes_per_batch=4 with data.images_per_class=3"):
        check_batch_fits(5, 3, labels)  # enough classes, but one has fewer than 3 images
    with pytest.raises(ConfigError, match="largest batch that fits"):
        ClassBalancedBatchSampler(labels, 6, 2)


def test_the_batch_is_refused_before_any_model_is_built(tmp_path, monkeypatch):
    photos = _photos(tmp_path / "photos", classes=4, images=2, size=16)
    config = load_config(ROOT / "recipes" / "folder_source.yaml", [f"data.root={photos}", "model.pretrained=false"])

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(trainer.Trainer, "_new_method", no_model)
    with pytest.raises(ConfigError, match=r"classes_per_batch=16 .* 2 classes, the smallest with 2 images"):
        trainer.train(config, tmp_path / "run", progress=False)


# ------------------------------------------------------------------------------- inspect, --root


def test_inspect_names_each_splits_classes(tmp_path):
    photos = _photos(tmp_path / "photos", classes=24, images=1, size=8)
    status, text = _run(["data", "inspect", "--dataset", "folder", "--root", str(photos), "--test-fraction", "0.1"])
    assert status == 0
    train_line = next(line for line in text.splitlines() if line.strip().startswith("train classes:"))
    assert "class_00, class_01" in train_line and train_line.endswith("class_19 …and 2 more")  # 22 train classes, 20 named
    assert "test classes: class_22, class_23" in text
    status, text = _run(["data", "inspect", "--dataset", "folder", "--root", str(photos), "--test-fraction", "0.1", "--json"])
    splits = json.loads(text)["splits"]
    assert len(splits["train"]["class_names"]) == 22 and splits["test"]["class_names"] == ["class_22", "class_23"]


@pytest.mark.slow
def test_train_root_is_set_data_root(tmp_path, monkeypatch):
    seen = {}

    def fake_train(config, run_dir, **kwargs):
        seen["root"] = config.data.root
        raise ConfigError("stop here")

    monkeypatch.setattr(trainer, "train", fake_train)
    photos = tmp_path / "my photos: 2024"
    status = main(
        [
            "train",
            str(ROOT / "recipes" / "folder_source.yaml"),
            "--root",
            str(photos),
            "--set",
            "model.pretrained=false",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert status == 2 and seen["root"] == str(photos)


# ------------------------------------------------------------------------ the guide, end to end


@pytest.mark.slow
def test_the_own_data_guide_end_to_end(tmp_path):
    """docs/guides/own-data.md on a generated folder: inspect, train a source, teach a target, evaluate."""
    photos = _photos(tmp_path / "photos")
    status, text = _run(["data", "inspect", "--dataset", "folder", "--root", str(photos)])
    assert status == 0 and "train classes: class_00, class_01, class_02" in text
    sets = [arg for item in TINY for arg in ("--set", item)]
    source, target = tmp_path / "runs" / "my-source", tmp_path / "runs" / "my-target"
    status, _ = _run(["train", str(ROOT / "recipes" / "folder_source.yaml"), "--root", str(photos), "--out", str(source), *sets, "--json"])
    assert status == 0 and (source / "config.yaml").is_file()
    status, _ = _run(
        [
            "train",
            str(ROOT / "recipes" / "folder_transfer.yaml"),
            "--root",
            str(photos),
            "--out",
            str(target),
            "--set",
            f"transfer.source_checkpoint={source}",
            *sets,
            "--json",
        ]
    )
    assert status == 0
    status, text = _run(["evaluate", "--checkpoint", str(target), "--json"])
    assert status == 0 and 0.0 <= json.loads(text)["recall@1"] <= 1.0
