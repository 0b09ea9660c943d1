"""``metrictransfer embed --images``: any images (a folder, a CSV, one file) embedded by a run's model or a timm
model into the file ``embed`` writes for a split, which ``evaluate --embeddings`` reads when labelled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metrictransfer.cli import main
from metrictransfer.config import build_config
from metrictransfer.evaluation.embeddings_file import load_embeddings
from metrictransfer.models import EmbeddingModel
from metrictransfer.runtime.checkpoint import save_embedding_model
from tests.helpers import COLOURS, coloured_gallery


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """Three classes of four coloured images each, and an untrained run's checkpoint (no quality needed)."""
    root = tmp_path_factory.mktemp("embed-images")
    images = root / "photos"
    coloured_gallery(images)
    torch.manual_seed(0)
    raw = {"model": {"backbone": "resnet10t", "embedding_dim": 8}, "data": {"image_size": 32, "num_workers": 0}}
    checkpoint = save_embedding_model(EmbeddingModel("resnet10t", 8), build_config(raw), root / "model.pt")
    return {"images": images, "checkpoint": checkpoint}


def _embed(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(["embed", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("out_name", ["photos.npz", "photos-table"])
def test_a_folder_of_class_folders_is_embedded_with_its_labels_and_evaluated(setup, tmp_path, capsys, out_name):
    """Catches: a folder refused (embed took dataset splits only), its classes lost, or a file evaluate refuses."""
    images, out = setup["images"], tmp_path / out_name
    status, stdout, _ = _embed(capsys, "--checkpoint", str(setup["checkpoint"]), "--images", str(images), "--out", str(out), "--json")
    assert status == 0
    assert json.loads(stdout) | {"out": None} == {
        "out": None, "images": str(images), "items": 12, "dim": 8, "format": "npz" if out_name.endswith(".npz") else "table",
        "dtype": "float32",
    }  # fmt: skip
    data = load_embeddings(out)
    expected = sorted(str((images / c / f"{i}.png").resolve()) for c in COLOURS for i in range(4))
    assert list(data.items) == expected  # item names: the images' paths, in the listing's order
    assert sorted(np.bincount(data.labels).tolist()) == [4, 4, 4]
    assert data.embeddings.shape == (12, 8) and data.dataset is None and data.split is None
    labels_by_class = {Path(item).parent.name: label for item, label in zip(data.items, data.labels)}
    assert len(set(labels_by_class.values())) == 3
    capsys.readouterr()
    assert main(["evaluate", "--embeddings", str(out), "--k", "1,2", "--json"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["recall@1"] <= 1.0
    status, stdout, _ = _embed(capsys, "--checkpoint", str(setup["checkpoint"]), "--images", str(images), "--out", str(tmp_path / "a.npz"))
    assert status == 0 and stdout.strip() == f"{tmp_path / 'a.npz'}: 12 images of {images}, 8-d embeddings"


def test_one_image_file_is_embedded_unlabelled(setup, tmp_path, capsys):
    image, out = setup["images"] / "green" / "1.png", tmp_path / "one.npz"
    status, _, err = _embed(capsys, "--checkpoint", str(setup["checkpoint"]), "--images", str(image), "--out", str(out))
    assert status == 0, err
    data = load_embeddings(out)
    assert data.embeddings.shape == (1, 8) and list(data.labels) == [-1] and list(data.items) == [str(image.resolve())]
    # the same image embedded within its folder gets the same embedding: one model, one preprocessing
    folder = tmp_path / "all.npz"
    assert _embed(capsys, "--checkpoint", str(setup["checkpoint"]), "--images", str(setup["images"]), "--out", str(folder))[0] == 0
    whole = load_embeddings(folder)
    row = list(whole.items).index(str(image.resolve()))
    np.testing.assert_allclose(whole.embeddings[row], data.embeddings[0], atol=1e-5)


def test_a_csv_lists_the_images_and_their_labels(setup, tmp_path, capsys):
    images = setup["images"]
    listing = tmp_path / "list.csv"
    listing.write_text(f"path,label\n{images / 'red' / '0.png'},warm\n{images / 'blue' / '2.png'},cold\n{images / 'red' / '3.png'},warm\n")
    out = tmp_path / "listed.npz"
    assert _embed(capsys, "--checkpoint", str(setup["checkpoint"]), "--images", str(listing), "--out", str(out))[0] == 0
    data = load_embeddings(out)
    assert [Path(p).relative_to(images.resolve()).as_posix() for p in data.items] == ["red/0.png", "blue/2.png", "red/3.png"]
    assert data.labels[0] == data.labels[2] != data.labels[1]
    unlabelled = tmp_path / "paths.csv"
    unlabelled.write_text(f"path\n{images / 'red' / '0.png'}\n")
    assert _embed(capsys, "--checkpoint", str(setup["checkpoint"]), "--images", str(unlabelled), "--out", str(out))[0] == 0
    assert list(load_embeddings(out).labels) == [-1]


def test_a_timm_model_embeds_images_too(setup, tmp_path, capsys):
    out = tmp_path / "timm.npz"
    argv = ["--timm", "resnet10t", "--no-pretrained", "--image-size", "32", "--images", str(setup["images"]), "--out", str(out)]
    status, _, err = _embed(capsys, *argv, "--set", "data.num_workers=0")
    assert status == 0, err
    data = load_embeddings(out)
    assert len(data.items) == 12 and data.model is not None and data.model["kind"] == "timm"


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--split", "train"], "give --images (any images) or --split (a dataset's split), not both"),
        (["--dataset", "glyphs", "--timm", "resnet10t"], "give --images (any images) or --dataset (a dataset's split), not both"),
    ],
)
def test_images_and_a_split_exclude_each_other(setup, tmp_path, capsys, extra, words):
    model = [] if "--timm" in extra else ["--checkpoint", str(setup["checkpoint"])]
    status, _, err = _embed(capsys, *model, "--images", str(setup["images"]), *extra, "--out", str(tmp_path / "x.npz"))
    assert status == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.npz").exists()


def test_an_unreadable_image_is_named_with_what_to_do(setup, tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / "red").mkdir(parents=True)
    Image.new("RGB", (40, 40), (200, 0, 0)).save(folder / "red" / "fine.png")
    (folder / "red" / "empty.jpg").write_bytes(b"")
    status, _, err = _embed(capsys, "--checkpoint", str(setup["checkpoint"]), "--images", str(folder), "--out", str(tmp_path / "x.npz"))
    assert status != 0 and "Traceback" not in err
    assert f"cannot read image {folder / 'red' / 'empty.jpg'}" in err and f"fix it or remove it from {folder}" in err, err
    assert not (tmp_path / "x.npz").exists()
    missing = tmp_path / "none"
    status, _, err = _embed(capsys, "--checkpoint", str(setup["checkpoint"]), "--images", str(missing), "--out", str(tmp_path / "x.npz"))
    assert status != 0 and "does not exist" in err and "an image file" in err
