"""Diversified mutual metric learning: gradients, update counts, views, EMA, ensemble, configuration."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from metrictransfer.cli import main
from metrictransfer.config import ConfigError, build_config, load_config
from metrictransfer.data.multiview import MultiViewDataset, collate_readable, flatten_views
from metrictransfer.data.registry import build_dataset
from metrictransfer.engine import trainer
from metrictransfer.evaluation import ensemble_embeddings, retrieval_metrics
from metrictransfer.methods.mutual import MutualConfig, MutualMethod
from metrictransfer.runtime.checkpoint import load_checkpoint, load_embedding_model

TINY = {
    "data": {"num_classes": 6, "classes_per_batch": 6, "images_per_class": 2, "views": 2, "image_size": 32},
    "model": {"backbone": "resnet10t", "embedding_dim": 16, "normalize": True},
    "optim": {"lr": 1e-3, "epochs": 2},
    "eval": {"recall_at": [1, 2]},
    "threads": 2,
}


def _raw(**changes) -> dict:
    raw = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def _mutual(**mutual) -> dict:
    return _raw(method="mutual", mutual=mutual)


def _batch(config, method):
    """One training batch the way the trainer builds it: (B·streams·V) images, labels and indices."""
    data = config.data
    dataset = MultiViewDataset(build_dataset(data, "train"), method.train_transforms(data), data.views)
    views, labels, indices = next(iter(DataLoader(dataset, batch_size=8, shuffle=False, collate_fn=collate_readable)))
    images, flat_labels = flatten_views(views, labels)
    return images, flat_labels, indices.repeat_interleave(views.shape[1]), indices


def _method(raw: dict) -> tuple[MutualMethod, object]:
    config = build_config(raw)
    torch.manual_seed(config.seed)
    return MutualMethod(config, num_classes=6), config


@pytest.mark.parametrize("loss", ["rkd", "relaxed_contrastive", "pkt"])
def test_a_members_mutual_loss_sends_no_gradient_to_its_peers(loss):
    method, config = _method(_mutual(members=3, loss=loss, view_diversity=True))
    images, labels, indices, _ = _batch(config, method)
    losses = method.member_losses(images, labels, indices)
    for k, (_, _, mutual) in losses.items():
        assert mutual.item() > 0
        for j, peer in enumerate(method.members):
            grads = torch.autograd.grad(mutual, list(peer.parameters()), retain_graph=True, allow_unused=True)
            if j == k:
                assert any(g is not None and g.abs().sum() > 0 for g in grads), f"member {k} learns from its peers"
            else:
                assert all(g is None or not g.any() for g in grads), f"member {k}'s mutual loss reached member {j}"


def test_views_differ_between_members_but_images_labels_and_indices_align():
    method, config = _method(_mutual(members=3, view_diversity=True))
    images, labels, indices, batch_indices = _batch(config, method)
    assert images.shape[0] == 8 * 3 * 2  # images × members × views
    inputs = method.split_views(images)
    assert [x.shape[0] for x in inputs] == [16, 16, 16]
    assert not torch.equal(inputs[0], inputs[1]) and not torch.equal(inputs[1], inputs[2])
    for part in method.split_views(indices):  # every member's k-th row is the same training image
        assert torch.equal(part, batch_indices.repeat_interleave(2))
    assert all(torch.equal(part, method.split_views(labels)[0]) for part in method.split_views(labels))

    same, config = _method(_mutual(members=3, view_diversity=False))
    images, *_ = _batch(config, same)
    assert images.shape[0] == 8 * 2  # one set of views, decoded and augmented once for the cohort
    inputs = same.split_views(images)
    assert all(x is inputs[0] or torch.equal(x, inputs[0]) for x in inputs)


def test_augmentation_strength_zero_gives_the_plain_resized_image_to_every_member():
    method, config = _method(_mutual(members=2, view_diversity=True, augmentation_strength=[0.0, 0.0]))
    images, *_ = _batch(config, method)
    first, second = method.split_views(images)
    torch.testing.assert_close(first, second)


def test_model_diversity_gives_each_member_its_own_initialisation():
    diverse, _ = _method(_mutual(members=2, model_diversity=True))
    alike, _ = _method(_mutual(members=2, model_diversity=False))
    assert not torch.equal(diverse.members[0].head.weight, diverse.members[1].head.weight)
    assert torch.equal(alike.members[0].head.weight, alike.members[1].head.weight)
    assert torch.equal(alike.members[0].head.weight, diverse.members[0].head.weight)


@pytest.mark.slow
def test_one_member_stepping_every_iteration_is_plain_training(tmp_path):
    base = {"metric_loss": {"name": "triplet", "params": {"margin": 0.2}, "miner": "distance_weighted"}}
    plain = build_config(_raw(method="source", **base))
    cohort = build_config(_raw(method="mutual", mutual={"members": 1, "update_every": [1]}, **base))
    trainer.train(plain, tmp_path / "plain", progress=False)
    trainer.train(cohort, tmp_path / "cohort", progress=False)
    a = load_checkpoint(tmp_path / "plain")["models"]["model"]
    b = load_checkpoint(tmp_path / "cohort")["models"]["member0"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def cohort_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    config = build_config(_mutual(members=2, update_every=[1, 3], backbones=["resnet10t", "resnet18d"]))
    return out, trainer.train(config, out, progress=False), config


@pytest.mark.slow
def test_member_update_counts_follow_their_periods(cohort_run):
    out, results, _ = cohort_run
    state = load_checkpoint(out)
    steps = results["history"][-1]["step"]
    assert steps == 2 * results["history"][0]["step"] > 0
    assert state["updates"] == {"member0": steps, "member1": steps // 3}
    assert state["schedulers"]["member1"]["last_epoch"] == steps // 3
    assert results["history"][0]["member1/updates"] == results["history"][0]["step"] // 3


@pytest.mark.slow
def test_every_member_and_the_ensemble_are_evaluated_and_the_ensemble_is_the_concatenation(cohort_run, tmp_path, capsys):
    out, results, config = cohort_run
    final = results["final"]
    for prefix in ["member0/", "member1/", "ensemble/", ""]:
        assert {f"{prefix}recall@1", f"{prefix}recall@2", f"{prefix}map@r"} <= set(final)
    assert final["recall@1"] == final["ensemble/recall@1"]
    files = []
    for name in ["member0", "member1"]:
        files.append(tmp_path / f"{name}.npz")
        assert main(["embed", "--checkpoint", str(out), "--model", name, "--out", str(files[-1])]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--embeddings", *map(str, files), "--k", "1,2", "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)
    assert reported["recall@1"] == pytest.approx(final["ensemble/recall@1"], abs=1e-6)
    parts = [torch.from_numpy(np.load(f)["embeddings"]) for f in files]
    labels = torch.from_numpy(np.load(files[0])["labels"])
    direct = retrieval_metrics(ensemble_embeddings(parts), labels, [1, 2])
    assert direct["map@r"] == pytest.approx(final["ensemble/map@r"], abs=1e-6)
    member1, _ = load_embedding_model(out, name="member1")  # its own backbone, rebuilt from the checkpoint
    assert member1.backbone_name == "resnet18d"
    with pytest.raises(ValueError, match="member0, member1"):
        load_embedding_model(out, name="member7")
    assert (out / "recall.png").is_file()


def test_an_ema_member_follows_member_zero_and_gets_no_optimiser():
    method, config = _method(_mutual(members=2, ema_momentum=0.9))
    assert method.learners() == [0]
    assert [g.name for g in method.update_groups(1e-3)] == ["member0"]
    online, ema = method.members
    assert torch.equal(online.head.weight, ema.head.weight)  # starts as a copy
    before = ema.head.weight.detach().clone()
    with torch.no_grad():
        online.head.weight.add_(1.0)
    method.after_update("member0")
    torch.testing.assert_close(ema.head.weight, 0.9 * before + 0.1 * online.head.weight)
    images, labels, indices, _ = _batch(config, method)
    method.training_loss(images, labels, indices)[0].backward()
    assert all(p.grad is None for p in ema.parameters())


def test_gradients_of_a_slow_member_are_averaged_over_its_period():
    method, config = _method(_mutual(members=2, update_every=[1, 4], view_diversity=False, model_diversity=False))
    images, labels, indices, _ = _batch(config, method)
    method.training_loss(images, labels, indices)[0].backward()
    g0, g1 = method.members[0].head.weight.grad, method.members[1].head.weight.grad
    # identical members on identical views: the same loss, so member 1's gradient is a quarter of member 0's
    torch.testing.assert_close(g1, g0 / 4)


def test_independent_members_have_zero_mutual_weight_but_still_train():
    method, config = _method(_mutual(members=2, weight=0.0))
    images, labels, indices, _ = _batch(config, method)
    loss, logs = method.training_loss(images, labels, indices)
    assert logs["loss"] == pytest.approx(logs["member0/metric_loss"] + logs["member1/metric_loss"])


@pytest.mark.parametrize(
    ("mutual", "model", "message"),
    [
        ({"members": 2, "update_every": [1]}, {}, "mutual.update_every needs one entry per member"),
        ({"members": 2, "update_every": [1, 0]}, {}, "must be >= 1"),
        ({"members": 2, "backbones": ["resnet10t", "resnet18d"], "ema_momentum": 0.99}, {}, "same backbone"),
        ({"members": 1, "ema_momentum": 0.99}, {}, "at least 2 members"),
        ({"loss": "rdk"}, {}, "unknown mutual loss 'rdk'; valid names:"),
        ({"params": {"sigmaa": 1}}, {}, r"mutual loss 'rkd': unexpected keyword argument 'sigmaa' \(mutual\.loss\.params"),
        ({}, {"normalize": False}, "model.normalize: true"),
    ],
)
def test_bad_cohort_configurations_name_the_key(mutual, model, message):
    with pytest.raises(ConfigError, match=message):
        build_config(_raw(method="mutual", mutual=mutual, model=model))


def test_the_default_base_loss_is_the_triplet_loss_with_distance_weighted_sampling():
    config = build_config(_mutual())
    assert (config.metric_loss.name, config.metric_loss.params, config.metric_loss.miner.name) == (
        "triplet",
        {"margin": 0.2},
        "distance_weighted",
    )
    assert config.section(MutualConfig).taus() == [1, 2] and config.section(MutualConfig).loss.name == "rkd"
    explicit = build_config(_raw(method="mutual", metric_loss={"name": "proxy_anchor"}))
    assert explicit.metric_loss.name == "proxy_anchor"


def test_feature_and_memory_bank_losses_work_between_members():
    for loss in ["attention", "crd"]:  # at 32 px the last stage is 1 × 1: attention needs earlier ones too
        method, config = _method(_mutual(members=2, loss=loss, hint_stages=3))
        method.prepare_training_set(build_dataset(config.data, "train"))
        images, labels, indices, _ = _batch(config, method)
        loss_value, logs = method.training_loss(images, labels, indices)
        loss_value.backward()
        assert logs["member0/mutual_loss"] > 0 and logs["member1/mutual_loss"] > 0


@pytest.mark.slow
def test_the_cub_mutual_recipe_trains_on_a_cub_tree_from_the_command_line(tmp_path, capsys):
    from tests.data.test_image_data import make_cub

    root = make_cub(tmp_path / "CUB_200_2011", per_class=5)
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "mutual" / "cub_mutual.yaml"
    small = [
        "model.backbone=resnet10t",
        "model.pretrained=false",
        "model.embedding_dim=8",
        "data.image_size=32",
        "data.num_workers=0",
        "data.classes_per_batch=3",
        "optim.epochs=2",
        "eval.batch_size=16",
        "threads=2",
    ]
    out = tmp_path / "run"
    args = ["train", str(recipe), "--out", str(out), "--set", f"data.root={root}", *[x for s in small for x in ("--set", s)]]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"member0/recall@1", "member1/recall@1", "ensemble/recall@1"} <= set(results["final"])
    assert [row["step"] for row in results["history"]] == [1, 2]  # 15 training images: one batch an epoch
    assert [row["member1/updates"] for row in results["history"]] == [0, 1]  # τ = 2
    assert main(["table", str(out), "--metrics", "member0/recall@1,ensemble/recall@1"]) == 0
    assert "mutual K=2 triplet + 1·rkd (model + temporal + view diversity)" in capsys.readouterr().out


def test_the_glyphs_mutual_recipe_is_the_benchmarks_all_three_row(monkeypatch):
    import importlib

    top = Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(top))  # the benchmarks package sits at the repository root
    benchmark = importlib.import_module("benchmarks.mutual_ablation")
    ours = build_config(benchmark.cohort_config(benchmark.ROWS["all three"], 0, 10))
    recipe = load_config(top / "recipes" / "mutual" / "glyphs_mutual.yaml")
    for section in ("data", "model", "metric_loss", "method_section", "optim"):
        assert getattr(ours, section) == getattr(recipe, section), section


@pytest.mark.slow
def test_a_cohort_resumed_after_a_crash_ends_like_an_uninterrupted_one(tmp_path, monkeypatch):
    """τ = 4 does not divide the epoch's steps: member 1 carries gradients across the crash."""
    raw = _mutual(members=2, update_every=[1, 4], loss="relaxed_contrastive")
    raw["data"].update(num_classes=4, classes_per_batch=4)
    raw["eval"]["every"] = 0
    config = build_config(raw)
    whole = trainer.train(config, tmp_path / "whole", progress=False)
    steps = whole["history"][0]["step"]
    assert steps % 4 != 0, steps

    real_write_csv = trainer.write_csv

    def crash_after_first_checkpoint(rows, path):
        real_write_csv(rows, path)
        raise KeyboardInterrupt  # preempted right after epoch 1's checkpoint

    monkeypatch.setattr(trainer, "write_csv", crash_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(trainer, "write_csv", real_write_csv)
    assert main(["train", "--resume", str(tmp_path / "resumed")]) == 0
    a = load_checkpoint(tmp_path / "whole")
    b = load_checkpoint(tmp_path / "resumed")
    assert a["updates"] == b["updates"]
    for member in ("member0", "member1"):
        for key, value in a["models"][member].items():
            torch.testing.assert_close(b["models"][member][key], value, rtol=0, atol=1e-6, msg=f"{member} {key}")
