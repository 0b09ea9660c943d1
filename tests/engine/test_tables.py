"""``metrictransfer table`` on fake run folders (results.json and config.yaml, no training): rows are
settings, seeds of one setting averaged, anything else apart."""

import json
from pathlib import Path

import pytest

from metrictransfer.cli import main
from metrictransfer.config import build_config, save_config
from metrictransfer.engine.tables import collect_runs, markdown_table
from metrictransfer.errors import ConfigError

RECIPE = {
    "method": "transfer",
    "data": {"num_classes": 6, "classes_per_batch": 6, "images_per_class": 4, "image_size": 32},
    "model": {"backbone": "resnet10t", "embedding_dim": 16},
    "optim": {"epochs": 16},
    "eval": {"recall_at": [1, 2]},
}


def fake_run(folder: Path, recall1: float, seed: int = 0, epochs: int = 16, **changes) -> Path:
    """A finished run as the trainer leaves it, but for the weights: config.yaml and results.json."""
    raw = json.loads(json.dumps(RECIPE))
    raw["seed"], raw["optim"]["epochs"] = seed, epochs
    raw["transfer"] = {"source_checkpoint": str(folder.parent / f"source-{seed}")}  # each seed its own source
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    folder.mkdir(parents=True)
    save_config(build_config(raw), folder / "config.yaml")
    final = {"recall@1": recall1, "recall@2": min(1.0, recall1 + 0.1), "map@r": recall1 / 2, "r_precision": recall1 / 2}
    (folder / "results.json").write_text(
        json.dumps(
            {
                "name": None,
                "method": raw["method"],
                "epochs": epochs,
                "final": final,
                "best_epoch_selected_on_test_split": {"epoch": epochs, **final},
                "history": [{"epoch": epochs, **final}],
            }
        )
    )
    return folder


def rows(capsys) -> list[str]:
    return capsys.readouterr().out.strip().splitlines()


def test_two_seeds_of_one_configuration_are_one_row_with_mean_and_std(tmp_path, capsys):
    a = fake_run(tmp_path / "a", 0.5, seed=0)
    b = fake_run(tmp_path / "b", 0.7, seed=1, threads=2, device="cpu", eval={"batch_size": 32})  # run-time keys only
    assert main(["table", str(a), str(b), "--metrics", "recall@1,map@r"]) == 0
    lines = rows(capsys)
    assert lines[0] == "| dataset | target | method | n | seeds | R@1 | map@r |"
    assert lines[2:] == ["| glyphs | resnet10t 16-d | relaxed_contrastive | 2 | 0, 1 | 60.0 ± 14.1 | 30.0 ± 7.1 |"]


def test_runs_of_different_epochs_are_separate_rows_told_apart(tmp_path, capsys):
    # Bug caught: a 16-epoch run and a 1-epoch run of one recipe and seed were averaged as two seeds (53.3 ± 47.6).
    long = fake_run(tmp_path / "long", 0.9, epochs=16)
    short = fake_run(tmp_path / "short", 0.2, epochs=1)
    assert main(["table", str(long), str(short), "--metrics", "recall@1"]) == 0
    assert rows(capsys)[2:] == [
        "| glyphs | resnet10t 16-d | relaxed_contrastive (optim.epochs=16) | 1 | 0 | 90.0 |",
        "| glyphs | resnet10t 16-d | relaxed_contrastive (optim.epochs=1) | 1 | 0 | 20.0 |",
    ]


def test_rows_told_apart_by_their_method_need_no_keys(tmp_path, capsys):
    fake_run(tmp_path / "runs" / "rc", 0.5)
    fake_run(tmp_path / "runs" / "pkt", 0.4, transfer={"loss": "pkt"})
    assert main(["table", str(tmp_path / "runs"), "--metrics", "recall@1"]) == 0
    assert [line.split(" | ")[2] for line in rows(capsys)[2:]] == ["pkt", "relaxed_contrastive"]  # sorted folders


def test_the_same_seed_twice_in_one_configuration_is_refused_naming_both_runs(tmp_path, capsys):
    a = fake_run(tmp_path / "first", 0.5, seed=3)
    b = fake_run(tmp_path / "again", 0.6, seed=3)
    with pytest.raises(ConfigError, match=r"first and .*again are the same configuration with the same seed 3"):
        collect_runs([a, b])
    assert main(["table", str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(a) in err and str(b) in err
    assert main(["table", str(a), str(a)]) == 0  # one folder named twice is one run
    assert rows(capsys)[2].startswith("| glyphs | resnet10t 16-d | relaxed_contrastive | 1 | 3 |")


def test_a_demo_like_folder_expands_to_its_runs(tmp_path, capsys):
    demo = tmp_path / "demo"
    fake_run(demo / "target_transfer", 0.6)
    fake_run(demo / "target_alone", 0.4, method="source", transfer={})
    fake_run(demo / "source", 0.8, method="source", transfer={}, model={"embedding_dim": 32})
    (demo / "results.json").write_text(json.dumps({"source": {"recall@1": 0.8}}))  # the demo's summary: not a run
    (demo / "config.json").write_text("{}")
    (demo / "unfinished").mkdir()
    assert main(["table", str(demo), "--metrics", "recall@1"]) == 0
    assert rows(capsys)[2:] == [
        "| glyphs | resnet10t 32-d | proxy_anchor (no transfer) | 1 | 0 | 80.0 |",
        "| glyphs | resnet10t 16-d | proxy_anchor (no transfer) | 1 | 0 | 40.0 |",
        "| glyphs | resnet10t 16-d | relaxed_contrastive | 1 | 0 | 60.0 |",
    ]
    (tmp_path / "empty").mkdir()
    assert main(["table", str(tmp_path / "empty")]) == 2
    assert "empty has no results.json and holds no run folders" in capsys.readouterr().err


def test_an_unknown_metric_is_an_error_listing_the_available_ones(tmp_path, capsys):
    run = fake_run(tmp_path / "run", 0.5)
    assert main(["table", str(run), "--metrics", "recall@1,recal@4"]) == 2
    err = capsys.readouterr().err
    assert "'recal@4'" in err and "recall@1, recall@2, map@r, r_precision" in err
    assert main(["table", str(run), "--metrics", "recal@4", "--json"]) == 2
    with pytest.raises(ConfigError, match="no run has 'nope'"):
        markdown_table(collect_runs([run]), ["nope"])


def test_json_gives_each_run_its_group_key_and_row_label(tmp_path, capsys):
    a = fake_run(tmp_path / "a", 0.5, seed=0)
    b = fake_run(tmp_path / "b", 0.6, seed=1)
    c = fake_run(tmp_path / "c", 0.7, seed=0, optim={"lr": 3e-4})
    assert main(["table", str(a), str(b), str(c), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["group"] for r in records] == ["relaxed_contrastive (optim.lr=0.0001)"] * 2 + ["relaxed_contrastive (optim.lr=0.0003)"]
    key = records[0]["group_key"]
    assert key == records[1]["group_key"] != records[2]["group_key"]
    assert key["optim.epochs"] == 16 and key["transfer.loss.name"] == "relaxed_contrastive"
    assert not {"seed", "name", "threads", "device", "transfer.source_checkpoint"} & set(key)
    assert not any(k.startswith(("checkpoint.", "logging.")) for k in key)
