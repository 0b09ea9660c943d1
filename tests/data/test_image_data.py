"""Real image files end to end: decoding to RGB, bad files, transforms, data inspect, training on CUB and In-Shop trees."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metrictransfer.cli import main
from metrictransfer.config import DataConfig, build_config
from metrictransfer.data.images import BadImageError, ImageFolderDataset
from metrictransfer.data.index import ImageIndex
from metrictransfer.data.multiview import MultiViewDataset, collate_readable
from metrictransfer.data.registry import build_dataset
from metrictransfer.data.transforms import BN_INCEPTION_MEAN_BGR, build_transform
from metrictransfer.engine import trainer
from metrictransfer.evaluation import evaluate


def _jpeg(path: Path, color, mode: str = "RGB", size: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    pixels = np.clip(np.array(color)[None, None, :3] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format="JPEG")


def make_cub(root: Path, class_ids=(1, 2, 3, 101, 102, 103), per_class: int = 6) -> Path:
    """A CUB-200-2011 tree: images.txt, image_class_labels.txt, classes.txt, images/<class>/<file>.jpg."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for c in class_ids:
        folder = f"{c:03d}.Bird_{c}"
        color = rng.integers(30, 225, 3)
        for k in range(per_class):
            name = f"{folder}/Bird_{c}_{k:04d}.jpg"
            _jpeg(root / "images" / name, color)
            images.append(name)
            labels.append(c)
    (root / "images.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(images)))
    (root / "image_class_labels.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(labels)))
    (root / "classes.txt").write_text("".join(f"{c} {c:03d}.Bird_{c}\n" for c in range(1, 201)))
    return root


def make_inshop(root: Path) -> Path:
    """An In-Shop tree: list_eval_partition.txt (count, header, rows padded with runs of spaces) and img/."""
    rng = np.random.default_rng(1)
    rows = []
    for item in range(1, 9):
        color = rng.integers(30, 225, 3)
        for k in range(4):
            name = f"img/WOMEN/Dresses/id_{item:08d}/{k:02d}_1_front.jpg"
            _jpeg(root / name, color)
            status = "train" if item <= 4 else ("query" if k < 2 else "gallery")
            rows.append(f"{name}{' ' * 7}id_{item:08d}{' ' * 5}{status}")
    lines = [str(len(rows)), "image_name item_id evaluation_status", *rows]
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


TINY = {
    "data": {"classes_per_batch": 3, "images_per_class": 2, "views": 2, "transform": "paper", "image_size": 32},
    "model": {"backbone": "resnet10t", "embedding_dim": 8},
    "optim": {"lr": 1e-3, "epochs": 1},
    "eval": {"recall_at": [1, 2]},
    "threads": 2,
}


def _config(data: dict):
    raw = json.loads(json.dumps(TINY))
    raw["data"].update(data)
    return build_config(raw)


def test_grayscale_and_cmyk_jpegs_become_three_channel_tensors(tmp_path):
    _jpeg(tmp_path / "gray.jpg", (120, 120, 120), mode="L")
    _jpeg(tmp_path / "cmyk.jpg", (10, 200, 90), mode="CMYK")
    assert Image.open(tmp_path / "gray.jpg").mode == "L" and Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    index = ImageIndex(tmp_path, ["gray.jpg", "cmyk.jpg"], np.array([0, 1]), ["a", "b"])
    items = MultiViewDataset(ImageFolderDataset(index), build_transform("paper", True, 32), views=2)
    for i in range(2):
        views, label, position = items[i]
        assert views.shape == (2, 3, 32, 32) and views.dtype == torch.float32
        assert (label, position) == (i, i)


def test_bn_inception_convention_is_bgr_0_255_minus_mean(tmp_path):
    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "red.png")
    image = Image.open(tmp_path / "red.png")
    x = build_transform("paper", False, 16, "bn_inception")(image)
    blue, green, red = (x[c].mean().item() for c in range(3))
    assert red == pytest.approx(255 - BN_INCEPTION_MEAN_BGR[2], abs=1e-3)
    assert blue == pytest.approx(-BN_INCEPTION_MEAN_BGR[0], abs=1e-3)
    assert green == pytest.approx(-BN_INCEPTION_MEAN_BGR[1], abs=1e-3)


def test_corrupt_image_is_named_or_skipped(tmp_path):
    _jpeg(tmp_path / "good.jpg", (1, 2, 3))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    index = ImageIndex(tmp_path, ["good.jpg", "bad.jpg"], np.array([0, 0]), ["a"])
    with pytest.raises(BadImageError, match=r"cannot read image .*bad\.jpg.*data\.skip_bad_images"):
        ImageFolderDataset(index)[1]
    items = MultiViewDataset(ImageFolderDataset(index, skip_bad=True), build_transform("paper", False, 16))
    with pytest.warns(UserWarning, match="skipping unreadable image .*bad.jpg"):
        batch = collate_readable([items[0], items[1]])
    assert batch[0].shape[0] == 1 and batch[2].tolist() == [0]


@pytest.mark.slow
def test_corrupt_image_inside_a_worker_still_names_the_file(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    index = ImageIndex(tmp_path, ["bad.jpg"], np.array([0]), ["a"])
    loader = torch.utils.data.DataLoader(MultiViewDataset(ImageFolderDataset(index), build_transform("paper", False, 16)), num_workers=1)
    with pytest.raises(Exception, match=r"bad\.jpg"):
        next(iter(loader))


@pytest.mark.slow
def test_data_inspect_json_and_missing_files(tmp_path, capsys):
    root = make_cub(tmp_path / "CUB_200_2011")
    assert main(["data", "inspect", "--dataset", "cub", "--root", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "cub" and report["root"] == str(root)
    assert len(report["splits"]["train"].pop("class_names")) == 3  # each split's classes by name
    assert report["splits"]["train"] == {
        "images": 18,
        "classes": 3,
        "smallest_class": 6,
        "largest_class": 6,
        "missing_files": 0,
        "first_missing": [],
        "empty_files": 0,
        "first_empty": [],
        "unreadable_files": 0,
        "first_unreadable": [],
    }
    assert report["splits"]["test"]["images"] == 18
    (root / "images" / "101.Bird_101" / "Bird_101_0000.jpg").unlink()
    assert main(["data", "inspect", "--dataset", "cub", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "missing, first: images/101.Bird_101/Bird_101_0000.jpg" in out
    with pytest.raises(FileNotFoundError, match=r"cub test: 1 of 18 listed images do not exist"):
        build_dataset(DataConfig(dataset="cub", root=str(root)), "test")


def test_inspect_without_root_is_a_clear_error(capsys):
    assert main(["data", "inspect", "--dataset", "sop"]) == 2
    assert "needs data.root" in capsys.readouterr().err


@pytest.mark.slow
def test_train_and_evaluate_on_a_cub_tree(tmp_path):
    root = make_cub(tmp_path / "cub")
    results = trainer.train(_config({"dataset": "cub", "root": str(root)}), tmp_path / "run", progress=False)
    assert set(results["final"]) == {"recall@1", "recall@2", "map@r", "r_precision"}
    assert 0.0 <= results["final"]["recall@1"] <= 1.0


@pytest.mark.slow
def test_in_shop_evaluates_query_against_gallery(tmp_path, monkeypatch):
    root = make_inshop(tmp_path / "inshop")
    test = build_dataset(DataConfig(dataset="inshop", root=str(root)), "test")
    assert test.is_query.sum() == 8 and test.is_gallery.sum() == 8
    assert sorted(test.labels[test.is_query].tolist()) == sorted(test.labels[test.is_gallery].tolist())
    seen = {}
    real = evaluate.retrieval_metrics

    def spy(embeddings, labels, *args, **kwargs):
        seen.update(kwargs)
        return real(embeddings, labels, *args, **kwargs)

    monkeypatch.setattr(evaluate, "retrieval_metrics", spy)
    config = _config({"dataset": "inshop", "root": str(root), "classes_per_batch": 2})
    results = trainer.train(config, tmp_path / "run", progress=False)
    assert seen["is_query"].sum() == 8 and not (seen["is_query"] & seen["is_gallery"]).any()
    assert "recall@1" in results["final"]


@pytest.mark.slow
def test_training_skips_bad_images_and_counts_them(tmp_path):
    root = make_cub(tmp_path / "cub")
    (root / "images" / "001.Bird_1" / "Bird_1_0000.jpg").write_bytes(b"broken")
    config = _config({"dataset": "cub", "root": str(root), "skip_bad_images": True})
    with pytest.warns(UserWarning, match="Bird_1_0000.jpg"):
        trainer.train(config, tmp_path / "run", progress=False)
    log = (tmp_path / "run" / "log.csv").read_text()
    assert "skipped_images" in log.splitlines()[0]
    assert int(log.splitlines()[1].split(",")[log.splitlines()[0].split(",").index("skipped_images")]) >= 1


def test_label_needing_training_on_unlabelled_images_is_refused_clearly(tmp_path):
    from metrictransfer.config import ConfigError

    for i in range(4):
        _jpeg(tmp_path / "photos" / f"{i}.jpg", (i * 40, 10, 10))
    with pytest.raises(ConfigError, match="has no labels, and method .source. needs them"):
        trainer.train(_config({"dataset": "unlabelled", "root": str(tmp_path / "photos")}), tmp_path / "run", progress=False)


def test_folder_and_csv_layouts_feed_training_items(tmp_path):
    for c in range(4):
        for k in range(3):
            _jpeg(tmp_path / "shop" / f"class_{c}" / f"{k}.jpg", (c * 60, 100, 100))
    folder = build_dataset(DataConfig(dataset="folder", root=str(tmp_path / "shop"), test_classes=["class_3"]), "test")
    assert len(folder) == 3 and folder.classes == ["class_3"] and folder[0][0].mode == "RGB"
    rows = ["path,label,split"] + [f"shop/class_{c}/{k}.jpg,{c},{'train' if c < 2 else 'test'}" for c in range(4) for k in range(3)]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    train = build_dataset(DataConfig(dataset="csv", root=str(tmp_path / "list.csv")), "train")
    assert len(train) == 6 and sorted(set(train.labels.tolist())) == [0, 1]
    image, label = train[5]
    assert image.size == (24, 24) and label == 1


@pytest.mark.slow
def test_selfsup_then_label_free_transfer_on_an_unlabelled_folder(tmp_path):
    """A source trained without labels, then a target trained from it by the relaxed contrastive loss on
    an unlabelled folder, both evaluated on a labelled set (eval.data)."""
    for i in range(12):
        _jpeg(tmp_path / "photos" / f"{i}.jpg", (i * 20, 255 - i * 20, 60))
    cub = make_cub(tmp_path / "cub")
    common = {
        "data": {
            "dataset": "unlabelled",
            "root": str(tmp_path / "photos"),
            "transform": "paper",
            "image_size": 32,
            "classes_per_batch": 3,
            "images_per_class": 2,
            "views": 2,
        },
        "model": {"backbone": "resnet10t", "embedding_dim": 8},
        "optim": {"lr": 1e-3, "epochs": 1},
        "eval": {"recall_at": [1], "data": {"dataset": "cub", "root": str(cub), "transform": "paper", "image_size": 32}},
        "threads": 2,
    }
    source = trainer.train(build_config({**common, "method": "selfsup"}), tmp_path / "source", progress=False)
    assert np.isfinite(source["history"][-1]["loss"]) and "recall@1" in source["final"]
    transfer = {**common, "method": "transfer", "transfer": {"source_checkpoint": str(tmp_path / "source")}}
    results = trainer.train(build_config(transfer), tmp_path / "target", progress=False)
    assert "recall@1" in results["final"]
