"""``metrictransfer table`` on fake run folders (results.json and config.yaml, no training): rows are
settings, seeds of one setting averaged, anything else apart."""

import json
from pathlib import Path

import pytest

from metrictransfer.cli import main
from metrictransfer.config import RunConfig, build_config, save_config
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
    if raw["method"] != "transfer":
        del raw["transfer"]  # only the run's method has its section
    final = {"recall@1": recall1, "recall@2": min(1.0, recall1 + 0.1), "map@r": recall1 / 2, "r_precision": recall1 / 2}
    return write_run(folder, build_config(raw), final)


def write_run(folder: Path, config: RunConfig, final: dict[str, float]) -> Path:
    """config.yaml and results.json of a finished run whose final metrics are ``final``."""
    epochs = config.optim.epochs
    folder.mkdir(parents=True)
    save_config(config, folder / "config.yaml")
    (folder / "results.json").write_text(
        json.dumps(
            {
                "name": None,
                "method": config.method,
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
    assert lines[0] == "| run | dataset | model | teacher | method | n | seeds | R@1 | map@r |"
    assert lines[2:] == [
        "| a, b | glyphs | resnet10t 16-d | source-0, source-1 | relaxed_contrastive | 2 | 0, 1 | 60.0 ± 14.1 | 30.0 ± 7.1 |"
    ]


def test_runs_of_different_epochs_are_separate_rows_told_apart(tmp_path, capsys):
    # Bug caught: a 16-epoch run and a 1-epoch run of one recipe and seed were averaged as two seeds (53.3 ± 47.6).
    long = fake_run(tmp_path / "long", 0.9, epochs=16)
    short = fake_run(tmp_path / "short", 0.2, epochs=1)
    assert main(["table", str(long), str(short), "--metrics", "recall@1"]) == 0
    assert rows(capsys)[2:] == [
        "| long | glyphs | resnet10t 16-d | source-0 | relaxed_contrastive (epochs=16) | 1 | 0 | 90.0 |",
        "| short | glyphs | resnet10t 16-d | source-0 | relaxed_contrastive (epochs=1) | 1 | 0 | 20.0 |",
    ]


def test_rows_told_apart_by_their_method_need_no_keys(tmp_path, capsys):
    fake_run(tmp_path / "runs" / "rc", 0.5)
    fake_run(tmp_path / "runs" / "pkt", 0.4, transfer={"loss": "pkt"})
    assert main(["table", str(tmp_path / "runs"), "--metrics", "recall@1"]) == 0
    assert [line.split(" | ")[4] for line in rows(capsys)[2:]] == ["pkt", "relaxed_contrastive"]  # sorted folders


def test_the_same_seed_twice_in_one_configuration_is_refused_naming_both_runs(tmp_path, capsys):
    a = fake_run(tmp_path / "first", 0.5, seed=3)
    b = fake_run(tmp_path / "again", 0.6, seed=3)
    with pytest.raises(ConfigError, match=r"first and .*again are the same configuration with the same seed 3"):
        collect_runs([a, b])
    assert main(["table", str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(a) in err and str(b) in err
    assert main(["table", str(a), str(a)]) == 0  # one folder named twice is one run
    assert rows(capsys)[2].startswith("| first | glyphs | resnet10t 16-d | source-3 | relaxed_contrastive | 1 | 3 |")


def test_a_demo_like_folder_expands_to_its_runs(tmp_path, capsys):
    demo = tmp_path / "demo"
    fake_run(demo / "target_transfer", 0.6)
    fake_run(demo / "target_alone", 0.4, method="source")
    fake_run(demo / "source", 0.8, method="source", model={"embedding_dim": 32})
    (demo / "results.json").write_text(json.dumps({"source": {"recall@1": 0.8}}))  # the demo's summary: not a run
    (demo / "config.json").write_text("{}")
    (demo / "unfinished").mkdir()
    assert main(["table", str(demo), "--metrics", "recall@1"]) == 0
    assert rows(capsys)[2:] == [
        "| source | glyphs | resnet10t 32-d | – | proxy_anchor (no transfer) | 1 | 0 | 80.0 |",
        "| target_alone | glyphs | resnet10t 16-d | – | proxy_anchor (no transfer) | 1 | 0 | 40.0 |",
        "| target_transfer | glyphs | resnet10t 16-d | source-0 | relaxed_contrastive | 1 | 0 | 60.0 |",
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
    assert [r["group"] for r in records] == ["relaxed_contrastive (lr=0.0001)"] * 2 + ["relaxed_contrastive (lr=0.0003)"]
    assert [r["source"] for r in records] == ["source-0", "source-1", "source-0"]
    key = records[0]["group_key"]
    assert key == records[1]["group_key"] != records[2]["group_key"]
    assert key["optim.epochs"] == 16 and key["transfer.loss.name"] == "relaxed_contrastive"
    assert not {"seed", "name", "threads", "device", "transfer.source_checkpoint"} & set(key)
    assert not any(k.startswith(("checkpoint.", "logging.")) for k in key)


def test_a_distill_a_source_a_target_alone_and_a_transfer_each_read_at_a_glance(tmp_path, capsys):
    # Bug caught: a distill row's method cell was ~900 characters of "eval.data.classes_per_batch=(unset), ...",
    # the unlabelled distill showed "–" (its agreement@10 only with --metrics), no column named the run,
    # and the source model sat in a column named "target".
    from metrictransfer.distillation import DEFAULT_LOSS, distill_config

    (tmp_path / "photos").mkdir()
    (tmp_path / "labelled").mkdir()
    runs = tmp_path / "runs"
    teacher = "vit_small_patch14_dinov2.lvd142m"
    write_run(runs / "distill-plain", distill_config(teacher, "resnet18", 128, tmp_path / "photos", epochs=3), {"agreement@10": 0.61})
    labelled = distill_config(teacher, "resnet18", 128, tmp_path / "photos", eval_data=tmp_path / "labelled", epochs=3)
    write_run(runs / "distill-labelled", labelled, {"recall@1": 0.5, "recall@2": 0.6})
    fake_run(runs / "source", 0.8, method="source", model={"embedding_dim": 32})
    fake_run(runs / "target-alone", 0.4, method="source")
    fake_run(runs / "transfer", 0.6)
    assert main(["table", str(runs)]) == 0
    lines = rows(capsys)
    assert lines[0] == "| run | dataset | model | teacher | method | n | seeds | R@1 | R@2 | agreement@10 |"
    assert lines[2:] == [
        f"| distill-labelled | unlabelled | resnet18 128-d | {teacher} | {DEFAULT_LOSS} (holdout_images=0, eval.data=folder) "
        "| 1 | 0 | 50.0 | 60.0 | – |",
        f"| distill-plain | unlabelled | resnet18 128-d | {teacher} | {DEFAULT_LOSS} (holdout_images=0.1, eval.data=none) "
        "| 1 | 0 | – | – | 61.0 |",
        "| source | glyphs | resnet10t 32-d | – | proxy_anchor (no transfer) | 1 | 0 | 80.0 | 90.0 | – |",
        "| target-alone | glyphs | resnet10t 16-d | – | proxy_anchor (no transfer) | 1 | 0 | 40.0 | 50.0 | – |",
        "| transfer | glyphs | resnet10t 16-d | source-0 | relaxed_contrastive | 1 | 0 | 60.0 | 70.0 | – |",
    ]
    assert main(["table", str(runs / "distill-plain")]) == 0  # unlabelled alone: its agreement, not every metric
    assert rows(capsys)[0].endswith("| seeds | agreement@10 |")


def test_a_method_cell_names_at_most_three_settings_shortened_and_stays_short(tmp_path, capsys):
    long_root = "/data/" + "very_long_folder_name_" * 4 + "photos"
    fake_run(tmp_path / "runs" / "a", 0.5, optim={"lr": 1e-3, "weight_decay": 0.0}, data={"root": long_root + "1"})
    fake_run(tmp_path / "runs" / "b", 0.6, optim={"lr": 3e-4, "weight_decay": 0.01}, data={"root": long_root + "2"}, eval={"every": 2})
    records = collect_runs([tmp_path / "runs"])
    assert records[0]["group"] == "relaxed_contrastive (data.root=…ong_folder_name_photos1, eval.every=1, +2 more)"
    assert all(len(r["group"]) <= 80 and "unset" not in r["group"] and "/" not in r["group"] for r in records)


def test_runs_of_the_same_folder_name_are_named_with_their_parent(tmp_path, capsys):
    fake_run(tmp_path / "cub" / "run", 0.5)
    fake_run(tmp_path / "cars" / "run", 0.6, optim={"lr": 3e-4})
    assert main(["table", str(tmp_path / "cub" / "run"), str(tmp_path / "cars" / "run"), "--metrics", "recall@1"]) == 0
    assert [line.split(" | ")[0] for line in rows(capsys)[2:]] == ["| cub/run", "| cars/run"]


def test_the_table_in_the_guide_is_what_table_prints(tmp_path, capsys):
    from metrictransfer.distillation import distill_config

    guide = (Path(__file__).parents[2] / "docs" / "guides" / "using-a-model.md").read_text()
    documented = guide.split("```text\n| run |", 1)[1].split("```", 1)[0]
    (tmp_path / "photos").mkdir()
    distill = distill_config("vit_small_patch14_dinov2.lvd142m", "resnet18", 128, tmp_path / "photos")
    runs = [write_run(tmp_path / "distill-photos", distill, {"agreement@10": 0.61})]
    runs.append(fake_run(tmp_path / "glyphs-source", 0.8, method="source", model={"embedding_dim": 32}))
    runs.append(fake_run(tmp_path / "glyphs-transfer", 0.6, transfer={"source_checkpoint": str(runs[-1])}))
    for run in runs[1:]:  # recall@1 and recall@2 only, as a recipe with eval.recall_at [1, 2] writes
        results = json.loads((run / "results.json").read_text())
        results["final"] = {k: v for k, v in results["final"].items() if k.startswith("recall@")}
        (run / "results.json").write_text(json.dumps(results))
    assert main(["table", *map(str, runs)]) == 0
    assert "| run |" + documented == capsys.readouterr().out
