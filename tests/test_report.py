"""report.md and its plots: written by the train command, rebuilt by metrictransfer report."""

import json
import sys

import pytest

import yaml
from PIL import Image

from metrictransfer.cli import main

COHORT = {
    "method": "mutual",
    "data": {"num_classes": 6, "classes_per_batch": 6, "images_per_class": 2, "views": 2, "image_size": 32},
    "model": {"backbone": "resnet10t", "embedding_dim": 16, "normalize": True},
    "mutual": {"members": 2, "update_every": [1, 1]},
    "optim": {"lr": 1e-3, "epochs": 2},
    "eval": {"recall_at": [1, 2]},
    "threads": 2,
}


def test_train_writes_a_report_with_every_member_and_the_plots(tmp_path, capsys):
    recipe = tmp_path / "cohort.yaml"
    recipe.write_text(yaml.safe_dump(COHORT))
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["report"] == str(run / "report.md")
    report = (run / "report.md").read_text()
    final = json.loads((run / "results.json").read_text())["final"]
    for model in ("member0", "member1", "ensemble"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {model} |"))
        assert f"{100 * final[f'{model}/recall@1']:.1f}" in row
    for image in ("curves.png", "retrieval.png", "embedding_map.png"):
        assert f"]({image})" in report
        with Image.open(run / image) as png:
            assert png.size[0] > 300
    assert "t-SNE" in report or "UMAP" in report

    (run / "report.md").unlink()
    (run / "curves.png").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.md").read_text() == report and (run / "curves.png").is_file()


def test_an_unfinished_run_has_no_report_yet(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["report", str(tmp_path / "run")]) == 2
    assert "has not finished" in capsys.readouterr().err


def test_tensorboard_gets_every_logged_number_per_epoch(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from metrictransfer.config import build_config
    from metrictransfer.engine.trainer import train

    raw = {**COHORT, "method": "source", "logging": {"tensorboard": True}}
    raw.pop("mutual")
    results = train(build_config(raw), tmp_path / "run", progress=False)
    events = event_accumulator.EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    recall = events.Scalars("recall@1")
    assert [e.step for e in recall] == [1, 2]
    assert recall[-1].value == pytest.approx(results["final"]["recall@1"])
    assert {"loss", "lr", "train_seconds"} <= set(events.Tags()["scalars"])


def test_tensorboard_without_its_package_says_how_to_install_it(tmp_path, monkeypatch):
    from metrictransfer.config import build_config
    from metrictransfer.engine.trainer import train

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    raw = {**COHORT, "method": "source", "logging": {"tensorboard": True}}
    raw.pop("mutual")
    with pytest.raises(ImportError, match="pip install tensorboard"):
        train(build_config(raw), tmp_path / "run", progress=False)
