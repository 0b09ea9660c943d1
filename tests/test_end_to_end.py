"""Tiny real runs on a few demo classes: source → transfer → evaluate, the CLI, the demo, resume."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from metrictransfer.cli import main
from metrictransfer.config import build_config, load_config, save_config
from metrictransfer.demo import demo_configs
from metrictransfer.engine import trainer
from metrictransfer.runtime.checkpoint import load_checkpoint, load_embedding_model

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TINY = {
    "data": {"num_classes": 6, "classes_per_batch": 6, "images_per_class": 4, "views": 2, "transform": "glyphs", "image_size": 32},
    "model": {"backbone": "resnet10t", "embedding_dim": 16},
    "optim": {"lr": 1e-3, "epochs": 2},
    "eval": {"recall_at": [1, 2]},
    "threads": 2,
}


def _config(**changes):
    raw = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return build_config(raw)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("source")
    results = trainer.train(_config(method="source", name="src"), out, progress=False)
    return out, results


@pytest.mark.slow
def test_source_run_writes_everything(source_run):
    out, results = source_run
    for name in ["checkpoint.pt", "config.yaml", "log.csv", "results.json", "recall.png"]:
        assert (out / name).is_file(), name
    assert set(results["final"]) == {"recall@1", "recall@2", "map@r", "r_precision"}
    assert 0.0 <= results["final"]["recall@1"] <= results["final"]["recall@2"] <= 1.0
    assert "best_epoch_selected_on_test_split" in results
    assert len(results["history"]) == 2
    # The saved configuration reproduces the run's configuration exactly.
    assert load_config(out / "config.yaml") == _config(method="source", name="src")


@pytest.mark.slow
def test_transfer_freezes_the_source_and_evaluate_matches(source_run, tmp_path, monkeypatch):
    from metrictransfer.methods import METHODS

    src_dir, _ = source_run
    created, modes = [], []

    class Watched(METHODS["transfer"]):  # the real method, watched from inside the training run
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self)

        def training_loss(self, *args, **kwargs):
            modes.append((self.source.training, any(p.requires_grad for p in self.source.parameters())))
            return super().training_loss(*args, **kwargs)

    monkeypatch.setitem(METHODS, "transfer", Watched)
    config = _config(method="transfer", name="tgt", transfer={"source_checkpoint": str(src_dir)})
    trainer.train(config, tmp_path, progress=False)
    state = load_checkpoint(tmp_path)
    assert state["output"] == "target" and list(state["models"]) == ["target"]
    # At every step the source was in eval mode without gradients, and after training the in-memory
    # source still holds the checkpoint's weights and batch-norm statistics, every buffer included.
    assert modes and set(modes) == {(False, False)}
    saved, live = load_checkpoint(src_dir)["models"]["model"], created[0].source.state_dict()
    assert set(live) == set(saved) and any("running_mean" in k for k in live)
    assert all(torch.equal(live[k].cpu(), saved[k]) for k in saved)
    model, _ = load_embedding_model(tmp_path)
    assert model.embedding_dim == 16
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--json"]) == 0


@pytest.mark.slow
def test_evaluate_cli_json_equals_final_metrics(source_run, capsys):
    out, results = source_run
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "checkpoint.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(results["final"], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "transfer",
    [
        {"loss": "pkt"},
        {"loss": "darkrank", "params": {"list_length": 3}},
        {"terms": [{"name": "rkd_distance", "weight": 1}, {"name": "rkd_angle", "weight": 2, "params": {"chunk": 8}}]},
        {"loss": "fitnet", "metric_weight": 1.0, "hint_stages": 2},
        {"loss": "attention", "metric_weight": 1.0},
        {"loss": "crd", "metric_weight": 1.0, "params": {"negatives": 64}},
        {"loss": "relaxed_ms"},
    ],
    ids=["pkt", "darkrank", "rkd-sum", "fitnet", "attention", "crd", "relaxed-ms"],
)
def test_transfer_with_any_registered_loss_or_weighted_sum(source_run, tmp_path, transfer):
    src_dir, _ = source_run
    config = _config(method="transfer", optim={"epochs": 1}, transfer={"source_checkpoint": str(src_dir), **transfer})
    results = trainer.train(config, tmp_path, progress=False)
    row = results["history"][-1]
    assert np.isfinite(row["transfer_loss"]) and "recall@1" in row
    if "terms" in transfer:
        expected = row["rkd_distance_loss"] + 2 * row["rkd_angle_loss"]
        assert row["transfer_loss"] == pytest.approx(expected, rel=1e-6)
    models = load_checkpoint(tmp_path)["models"]
    if transfer.get("loss") == "fitnet":  # the 1 × 1 regressors are trained and checkpointed with the target
        assert [k for k in models["transfer_losses"]] == ["0.regressors.0.weight", "0.regressors.1.weight"]
    elif transfer.get("loss") == "crd":  # projection heads and memory banks (one row per training image)
        assert models["transfer_losses"]["0.memory_source"].shape[1] == 128
    else:
        assert list(models) == ["target"]


def test_transfer_loss_parameters_are_checked():
    from metrictransfer.config import ConfigError

    with pytest.raises(ConfigError, match=r"transfer loss 'pkt': .*unexpected keyword argument 'sigmaa'.*its parameters: eps"):
        _config(method="transfer", transfer={"source_checkpoint": "x", "loss": "pkt", "params": {"sigmaa": 1}})
    with pytest.raises(ConfigError, match="either transfer.loss or transfer.terms"):
        _config(method="transfer", transfer={"source_checkpoint": "x", "loss": "pkt", "terms": [{"name": "rkd"}]})
    with pytest.raises(ConfigError, match=r"transfer loss 'pkt': unexpected keyword argument 'sigma' \(transfer\.loss\.params\.sigma\)"):
        _config(method="transfer", transfer={"source_checkpoint": "x", "loss": "pkt", "sigma": 0.5})  # the earlier layout's key


@pytest.mark.slow
def test_table_collects_runs_and_averages_seeds(source_run, tmp_path, capsys):
    out, results = source_run
    other = tmp_path / "other_seed"  # the same run as if trained with another seed
    other.mkdir()
    (other / "results.json").write_text((out / "results.json").read_text())
    config = load_config(out / "config.yaml")
    save_config(config.model_copy(update={"seed": config.seed + 1}), other / "config.yaml")
    assert main(["table", str(out), str(other), "--metrics", "recall@1,map@r"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "| run | dataset | model | teacher | method | n | seeds | R@1 | map@r |"
    r1 = 100 * results["final"]["recall@1"]
    assert (
        lines[2]
        == f"| {out.name}, other_seed | glyphs | resnet10t 16-d | – | proxy_anchor (no transfer) | 2 | {config.seed}, {config.seed + 1} | "
        + f"{r1:.1f} ± 0.0 | {100 * results['final']['map@r']:.1f} ± 0.0 |"
    )
    assert main(["table", str(out), str(out)]) == 0  # one run named twice is one run, not two seeds
    assert "| proxy_anchor (no transfer) | 1 |" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    assert main(["table", str(tmp_path / "empty")]) == 2  # neither a run nor a folder of runs: a clear error


def test_method_labels_name_losses_weights_and_label_terms():
    from metrictransfer.engine.tables import method_label

    base = {"method": "transfer"}
    assert method_label(_config(**base, transfer={"source_checkpoint": "x"})) == "relaxed_contrastive"
    terms = [{"name": "rkd_distance"}, {"name": "rkd_angle", "weight": 2}]
    assert method_label(_config(**base, transfer={"source_checkpoint": "x", "terms": terms})) == "rkd_distance + 2·rkd_angle"
    fitnet = _config(**base, transfer={"source_checkpoint": "x", "loss": "fitnet", "metric_weight": 1})
    assert method_label(fitnet) == "fitnet + proxy_anchor"


@pytest.mark.slow
def test_transfer_from_precomputed_source_embeddings(source_run, tmp_path):
    src_dir, _ = source_run
    table = tmp_path / "source_train.npz"
    assert main(["embed", "--checkpoint", str(src_dir), "--split", "train", "--out", str(table)]) == 0
    config = _config(method="transfer", optim={"epochs": 1}, transfer={"source_embeddings": str(table)})
    results = trainer.train(config, tmp_path / "run", progress=False)
    assert np.isfinite(results["history"][-1]["transfer_loss"])
    short = tmp_path / "short.npz"
    with np.load(table) as data:
        np.savez(short, embeddings=data["embeddings"][:-1], labels=data["labels"][:-1])
    bad = _config(method="transfer", optim={"epochs": 1}, transfer={"source_embeddings": str(short)})
    with pytest.raises(ValueError, match=r"short\.npz holds \d+ embeddings but the training set has \d+ images"):
        trainer.train(bad, tmp_path / "bad", progress=False)
    from metrictransfer.config import ConfigError

    with pytest.raises(ConfigError, match="exactly one of transfer.source_checkpoint"):
        _config(method="transfer", transfer={"source_embeddings": str(table), "source_checkpoint": str(src_dir)})


@pytest.mark.slow
def test_embed_then_evaluate_the_file_gives_the_run_metrics(source_run, tmp_path, capsys):
    out, results = source_run
    npz = tmp_path / "test.npz"
    assert main(["embed", "--checkpoint", str(out), "--split", "test", "--out", str(npz)]) == 0
    with np.load(npz, allow_pickle=False) as data:
        assert data["embeddings"].shape == (len(data["labels"]), 16)
        assert data["paths"][0] == "glyphs:test:0"
        assert str(data["metric"]) == "euclidean"
    capsys.readouterr()
    assert main(["evaluate", "--embeddings", str(npz), "--k", "1,2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(results["final"], abs=1e-6)


@pytest.mark.slow
def test_resume_after_a_crash_ends_like_an_uninterrupted_run(source_run, tmp_path, monkeypatch):
    _, uninterrupted = source_run
    real_write_csv = trainer.write_csv

    def crash_after_first_checkpoint(rows, path):
        real_write_csv(rows, path)
        raise KeyboardInterrupt  # as if the machine were preempted after epoch 1

    monkeypatch.setattr(trainer, "write_csv", crash_after_first_checkpoint)
    config = _config(method="source", name="src")
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config, tmp_path, progress=False)
    assert load_checkpoint(tmp_path)["epoch"] == 1
    monkeypatch.setattr(trainer, "write_csv", real_write_csv)
    assert main(["train", "--resume", str(tmp_path)]) == 0
    resumed = json.loads((tmp_path / "results.json").read_text())
    assert resumed["final"] == pytest.approx(uninterrupted["final"], abs=1e-6)


@pytest.mark.slow
def test_train_cli_with_overrides_and_bad_input(tmp_path, capsys):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "method": "source", "name": "tiny"}))
    assert main(["train", str(recipe), "--out", str(tmp_path / "run"), "--set", "optim.epochs=1"]) == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["epochs"] == 1
    assert main(["train", str(recipe), "--set", "optim.epochz=1"]) == 2
    assert "optim.epochz: unknown key" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["source", "target_alone", "target_transfer"])
def test_recipes_match_the_demo(name, tmp_path):
    recipe = {"source": "glyphs_source", "target_alone": "glyphs_target_alone", "target_transfer": "glyphs_transfer"}
    demo = demo_configs(tmp_path)[name]
    checkpoint = demo.method_section.get("source_checkpoint")
    from_recipe = load_config(RECIPES / f"{recipe[name]}.yaml", [f"transfer.source_checkpoint={checkpoint}"] if checkpoint else [])
    assert from_recipe == demo


@pytest.mark.slow
def test_classifier_with_holdout_accuracy_and_both_distillations(tmp_path):
    from metrictransfer.data.holdout import split_holdout
    from metrictransfer.data.registry import build_dataset

    data = {
        "num_classes": 6,
        "classes_per_batch": 6,
        "images_per_class": 4,
        "views": 1,
        "transform": "glyphs",
        "image_size": 32,
        "holdout_images": 0.25,
    }
    fit, held = split_holdout(build_dataset(_config(data=data).data, "train"), 0.25)
    assert set(fit.indices).isdisjoint(held.indices) and set(np.unique(held.labels)) == set(range(6))
    teacher = trainer.train(_config(method="classifier", data=data, optim={"epochs": 1}), tmp_path / "teacher", progress=False)
    assert 0.0 <= teacher["final"]["accuracy"] <= 1.0 and set(teacher["final"]) == {"accuracy"}
    for distill in ("relaxed_contrastive", "hinton"):
        config = _config(
            method="classifier",
            data=data,
            optim={"epochs": 1},
            classifier={"source_checkpoint": str(tmp_path / "teacher"), "distill": distill},
        )
        row = trainer.train(config, tmp_path / distill, progress=False)["history"][-1]
        assert np.isfinite(row["distill_loss"]) and "accuracy" in row


def test_hinton_distillation_is_zero_for_equal_logits_and_positive_otherwise():
    from metrictransfer.losses.logits import hinton_distillation

    logits = torch.randn(5, 7)
    assert hinton_distillation(logits, logits, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert hinton_distillation(logits, torch.randn(5, 7), 4.0).item() > 0
