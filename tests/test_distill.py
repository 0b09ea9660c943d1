"""`metrictransfer distill` on a generated folder of photos: one command, and the result is an ordinary run."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

from metrictransfer.cli import main
from metrictransfer.distillation import DEFAULT_LOSS
from metrictransfer.errors import MissingFileError


def _photos(root: Path, classes: int = 4, per_class: int = 6, seed: int = 0) -> Path:
    """Class folders of 40-px RGB JPEGs: each class a colour with noise and a bright square somewhere."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        colour = rng.integers(30, 220, 3)
        for i in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
            y, x = rng.integers(0, 30, 2)
            pixels[y : y + 10, x : x + 10] = 255
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A timm CNN's weights in a local file: the offline stand-in for a downloaded foundation model."""
    path = tmp_path_factory.mktemp("teacher") / "resnet10t.pt"
    torch.manual_seed(0)
    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), path)
    return path


def _distill(images: Path, out: Path, teacher: Path, *extra: str) -> list[str]:
    return [
        "distill",
        "--source", "resnet10t", "--source-weights", str(teacher), "--source-image-size", "48",
        "--target", "resnet10t", "--dim", "8", "--images", str(images), "--image-size", "32",
        "--epochs", "1", "--batch-size", "8", "--out", str(out), "--set", "threads=1", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_distill_with_labelled_eval_data_is_an_ordinary_run(tmp_path, teacher, capsys):
    """Catches a recipe that reads the training images' labels, evaluates on the wrong data, or leaves a run
    that evaluate, export, index, search and report cannot use."""
    images = _photos(tmp_path / "mine")
    labelled = _photos(tmp_path / "labelled", seed=1)
    run = tmp_path / "run"
    # 12 labelled images: recall@8 would be 1.0 whatever the model (refused before training), so ranks up to 4
    assert main(_distill(images, run, teacher, "--eval-data", str(labelled), "--json", "--set", "eval.recall_at=[1,2,4]")) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["final"]) >= {"recall@1", "map@r"}
    config = yaml.safe_load((run / "config.yaml").read_text())  # the recipe, rerunnable with train
    assert config["method"] == "transfer" and config["data"]["dataset"] == "unlabelled"
    assert config["transfer"]["source"] == {
        "name": "resnet10t", "pretrained": False, "weights": str(teacher), "features": "pooled",
        "image_size": 48, "normalization": "imagenet",
    }  # fmt: skip
    assert config["eval"]["data"]["dataset"] == "folder" and config["transfer"]["loss"]["name"] == DEFAULT_LOSS
    assert (run / "report.md").is_file()

    assert main(["evaluate", "--checkpoint", str(run), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["recall@1"] == pytest.approx(printed["final"]["recall@1"], abs=1e-6)  # the same test split
    assert main(["export", "--checkpoint", str(run), "--format", "safetensors", "--out", str(tmp_path / "m.safetensors"), "--json"]) == 0
    capsys.readouterr()
    assert main(["index", "--checkpoint", str(run), "--images", str(labelled), "--out", str(tmp_path / "index")]) == 0
    capsys.readouterr()
    query = next((labelled / "class_2").iterdir())
    assert main(["search", str(query), "--index", str(tmp_path / "index"), "--k", "3", "--json"]) == 0
    assert str(query.name) in capsys.readouterr().out


@pytest.mark.slow
def test_distill_without_labels_reports_agreement_with_the_source(tmp_path, teacher, capsys):
    """Catches an unlabelled run that cannot be evaluated at all, and evaluate failing in a dataset's words."""
    images = _photos(tmp_path / "mine", classes=5, per_class=8)
    run = tmp_path / "run"
    # 4 of 40 images held out: agreement@2 is noisy (chance 2/3), said once at the start
    with pytest.warns(UserWarning, match=r"agreement@2 on 4 held-out images is noisy .*data\.holdout_images=0\.1.* 67%"):
        assert main(_distill(images, run, teacher, "--set", "eval.agreement_at=[1,2]", "--json")) == 0
    final = json.loads(capsys.readouterr().out)["final"]
    assert set(final) == {"agreement@1", "agreement@2"} and all(0.0 <= v <= 1.0 for v in final.values())
    log = (run / "log.csv").read_text().splitlines()
    assert "agreement@1" in log[0] and len(log) == 2
    assert "held-out" in (run / "report.md").read_text()
    assert main(["evaluate", "--checkpoint", str(run)]) == 2
    err = capsys.readouterr().err
    assert "unlabelled images" in err
    # its advice for Recall@K is commands that work: embed the labelled images, evaluate the file
    labelled, embedded = _photos(tmp_path / "labelled", seed=1), tmp_path / "labelled.npz"
    advised = re.findall(r"metrictransfer (embed .*?) then metrictransfer (evaluate .*?) \(", err)
    assert advised, err
    for command in advised[0]:
        argv = command.replace("LABELLED_IMAGES", str(labelled)).replace("FILE.npz", str(embedded)).split()
        assert main([*argv, "--json"]) == 0, argv
    assert 0.0 <= json.loads(capsys.readouterr().out.splitlines()[-1])["recall@1"] <= 1.0


def test_print_recipe_and_bad_input(tmp_path, teacher, capsys):
    """Catches --print-recipe starting a run, --loss ignored or unchecked, and a missing image folder
    reported as a traceback."""
    images = _photos(tmp_path / "mine", classes=2, per_class=3)
    assert main(_distill(images, tmp_path / "run", teacher, "--print-recipe")) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"] == {
        "backbone": "resnet10t", "embedding_dim": 8, "pretrained": False, "weights": None,
        "normalize": False, "freeze_batchnorm": False, "sync_batchnorm": True,
    }  # fmt: skip
    assert not (tmp_path / "run").exists()
    assert main(_distill(images, tmp_path / "run", teacher, "--print-recipe")) == 0
    assert yaml.safe_load(capsys.readouterr().out)["transfer"]["loss"]["name"] == DEFAULT_LOSS
    assert main(_distill(images, tmp_path / "run", teacher, "--print-recipe", "--loss", "relaxed_ms")) == 0
    assert yaml.safe_load(capsys.readouterr().out)["transfer"]["loss"]["name"] == "relaxed_ms"
    assert main(_distill(images, tmp_path / "run", teacher, "--print-recipe", "--loss", "nosuch")) == 2
    assert "unknown transfer loss 'nosuch'" in capsys.readouterr().err
    assert main(_distill(tmp_path / "nowhere", tmp_path / "run", teacher)) == 2
    assert "--images" in capsys.readouterr().err
    with pytest.raises(MissingFileError, match="--images"):
        from metrictransfer.distillation import distill_config

        distill_config("resnet10t", "resnet10t", 8, tmp_path / "nowhere")


@pytest.mark.slow
def test_eval_data_among_the_training_images_is_warned_about(tmp_path, teacher, capsys):
    """Catches: distill evaluating on the very images it trains on, without a word (perfect-looking recalls
    that say nothing about new images)."""
    images = _photos(tmp_path / "mine")
    recipe = _distill(images, tmp_path / "run", teacher, "--print-recipe")
    with pytest.warns(UserWarning, match=r"--eval-data .*mine and --images .*mine share images"):
        assert main(recipe + ["--eval-data", str(images)]) == 0
    other = _photos(tmp_path / "labelled", seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(recipe + ["--eval-data", str(other)]) == 0


def test_agreement_that_cannot_be_below_one_is_refused_before_training(tmp_path, teacher, capsys):
    """Catches the issue's distill: 96 images, about 10 held out, and agreement@10 = 1.0 every epoch (every
    other held-out image is among both models' 10 nearest), reported as if it measured something."""
    images = _photos(tmp_path / "mine", classes=4, per_class=12)  # 48 images: 5 held out
    run = tmp_path / "run"
    assert main(_distill(images, run, teacher)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "eval.agreement_at 10 on 5 held-out images measures nothing" in err
    assert "data.holdout_images=0.1 holds out 5 of 48 images" in err
    assert "hold out at least 12 images: raise data.holdout_images (to 0.25) or lower eval.agreement_at to at most 3" in err
    assert "--eval-data" in err and not run.exists()


def test_distill_errors_name_its_own_options(tmp_path, teacher, capsys, monkeypatch):
    """Catches distill's errors naming the recipe keys it sets (transfer.source.weights, a batch size of no
    key at all) instead of its options, and naming a recipe in a run folder that a failed start removed."""
    from huggingface_hub import constants

    images = _photos(tmp_path / "mine", classes=4, per_class=12)  # 48 images: 43 train, 5 held out
    run = tmp_path / "run"
    assert main(_distill(images, run, teacher, "--batch-size", "64", "--set", "eval.agreement_at=[1]")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a batch of 64 images (--batch-size 64; drawn without labels)" in err, err
    assert "the largest batch that fits: --batch-size 43" in err and not run.exists()

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # no weights cached, and offline
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    argv = _distill(images, run, teacher, "--set", "eval.agreement_at=[1]")
    weights = argv.index("--source-weights")
    del argv[weights : weights + 2]  # the source's pretrained weights, downloaded
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "are not in the local cache and HF_HUB_OFFLINE is set; set --source-weights FILE" in err, err
    assert "transfer.source.weights" not in err and "config.yaml" not in err and not run.exists()
