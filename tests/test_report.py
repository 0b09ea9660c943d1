"""report.md and its plots: written by the train command, rebuilt by metrictransfer report."""

import json
import sys
from pathlib import Path

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


@pytest.mark.slow
def test_train_writes_a_report_with_every_member_and_the_plots(tmp_path, capsys):
    recipe = tmp_path / "cohort.yaml"
    recipe.write_text(yaml.safe_dump(COHORT))
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)  # exactly one JSON object: the epoch lines go to stderr
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_an_inshop_report_searches_queries_against_the_gallery(tmp_path, monkeypatch):
    """In-Shop's test split is queries and a gallery: the grid's queries are queries, its neighbours
    gallery images only."""
    from metrictransfer import report
    from tests.data.test_dataset_layouts import INSHOP_ROWS, _image, _inshop_lines, _write
    from tests.helpers import make_checkpoint

    root = tmp_path / "inshop"
    _write(root / "list_eval_partition.txt", _inshop_lines(INSHOP_ROWS))
    for path, _, _ in INSHOP_ROWS:
        _image(root / path)
    run = tmp_path / "run"
    run.mkdir()
    make_checkpoint(run / "checkpoint.pt")
    config = {
        "data": {"dataset": "inshop", "root": str(root), "transform": "paper", "image_size": 32},
        "model": {"backbone": "resnet10t", "embedding_dim": 8},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    row = {"epoch": 1, "loss": 1.0, "recall@1": 0.5}
    (run / "results.json").write_text(json.dumps({"final": {"recall@1": 0.5}, "history": [row]}))
    drawn = {}

    def spy(queries, results, out, query_labels=None, **kw):
        drawn.update(queries=queries, results=results)

    monkeypatch.setattr(report, "draw_grid", spy)
    monkeypatch.setattr(report, "_embedding_map", lambda *a, **k: "t-SNE")
    report.write_report(run)
    from metrictransfer.config import build_config
    from metrictransfer.data.registry import build_dataset

    paths = build_dataset(build_config(config).data, "test").item_names  # item i of the report is this file
    status = {path: s for path, _, s in INSHOP_ROWS}
    assert sorted(status[paths[int(q.split(":")[1])]] for q in drawn["queries"]) == ["query", "query"]
    found = [status[paths[int(n.path.split(":")[1])]] for row in drawn["results"] for n in row]
    assert set(found) == {"gallery"} and len(drawn["results"][0]) == 4  # every gallery image, no query
    assert "gallery images" in (run / "report.md").read_text()


@pytest.mark.slow
def test_the_report_names_files_and_classes_in_its_grid_and_map(tmp_path, monkeypatch):
    """retrieval.png names each image's file and class; embedding_map.png has a legend of the classes
    (spaces and accents included), beside the map, not over it."""
    from metrictransfer import report
    from metrictransfer.config import build_config
    from metrictransfer.data.registry import build_dataset
    from tests.helpers import figure_texts, make_checkpoint, saved_figures

    root = tmp_path / "photos"
    for c, name in enumerate(["Café crème", "Crème brûlée", "Thé vert", "Eau pétillante"]):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 40), (60 * c, 80 * i, 120)).save(root / name / f"{name[:4]} {i}.jpg")  # "Café 0.jpg": short, not cut
    run = tmp_path / "run"
    run.mkdir()
    make_checkpoint(run / "checkpoint.pt")
    config = {"data": {"dataset": "folder", "root": str(root), "image_size": 32}, "model": {"backbone": "resnet10t", "embedding_dim": 8}}
    (run / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    row = {"epoch": 1, "loss": 1.0, "recall@1": 0.5}
    (run / "results.json").write_text(json.dumps({"final": {"recall@1": 0.5}, "history": [row]}))
    figures = saved_figures(monkeypatch, report)
    report.write_report(run, queries=2, neighbours=3)
    _, grid, embedding_map = figures  # curves, retrieval, map
    test = build_dataset(build_config(config).data, "test")
    texts = figure_texts(grid)
    assert texts[0].startswith("query\n") and texts[0].split("\n")[2] in test.classes
    tiles = [t.split("\n") for t in texts if t]  # 2 queries and their 3 neighbours: distance or "query", file, class
    assert len(tiles) == 2 + 2 * 3 and all(tile[1] in {Path(p).name for p in test.item_names} for tile in tiles)
    assert "with their file names" in (run / "report.md").read_text()
    [ax] = embedding_map.axes
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == test.classes  # 3 points each: in class order
    embedding_map.canvas.draw()
    assert legend.get_window_extent().x0 > ax.get_window_extent().x1
    assert legend.get_window_extent().x1 <= embedding_map.bbox.x1


@pytest.mark.slow
def test_a_map_of_many_classes_names_the_most_frequent_and_counts_the_rest(tmp_path, monkeypatch):
    import numpy as np

    from metrictransfer import report

    monkeypatch.setattr(report, "_neighbourhood_layout", lambda x, seed: (x[:, :2], "t-SNE"))
    labels = np.repeat(np.arange(15), [3] * 10 + [1] * 5)  # classes 10-14 rarest
    from tests.helpers import saved_figures

    figures = saved_figures(monkeypatch, report)
    x = np.random.default_rng(0).normal(size=(len(labels), 4))
    report._embedding_map(x, labels, tmp_path / "map.png", 1500, 0, "test", [f"classe {c}" for c in range(15)])
    [fig] = figures
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts == [f"classe {c}" for c in range(10)] + ["5 more classes"]
