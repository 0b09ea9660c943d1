"""Validation data carved from the training split: the splits, and a training run that chooses its best
model on them and reads the test split only once it has finished."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metrictransfer.config import ValidationConfig, build_config
from metrictransfer.data.protocol import DatasetWrapper
from metrictransfer.data.validation import split_validation, validation_folds
from metrictransfer.engine.trainer import Trainer
from metrictransfer.errors import ConfigError
from metrictransfer.runtime.checkpoint import load_checkpoint, load_embedding_model

TINY = {
    "data": {"num_classes": 8, "classes_per_batch": 6, "images_per_class": 4, "views": 2, "validation": {"classes": 0.25}},
    "model": {"backbone": "resnet10t", "embedding_dim": 8},
    "optim": {"lr": 1e-3, "epochs": 2},
    "eval": {"recall_at": [1]},
    "checkpoint": {"keep": 2},
    "threads": 2,
}


def _config(**changes):
    raw = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return build_config(raw)


class _Labelled:
    """A dataset of labels alone, with class names and item names (a RetrievalDataset of no files)."""

    split = dataset_name = is_query = is_gallery = root = None

    def __init__(self, labels):
        self.labels = np.asarray(labels)
        self.classes = [f"class{c}" for c in range(int(self.labels.max()) + 1)]
        self.item_names = [f"image{i}" for i in range(len(self.labels))]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return f"image{i}", int(self.labels[i])


LABELS = np.repeat(np.arange(10), 5)


def test_validation_classes_are_disjoint_renumbered_and_fixed_by_the_seed():
    fit, held = split_validation(_Labelled(LABELS), ValidationConfig(classes=0.3, seed=1), "classes")
    fit_classes = {fit.dataset.labels[i] for i in fit.indices}
    held_classes = set(held.labels.tolist())
    assert len(held_classes) == 3 and not fit_classes & held_classes and fit_classes | held_classes == set(range(10))
    # the training part is renumbered 0..6, items and labels alike, and its class names follow
    assert sorted(set(fit.labels.tolist())) == list(range(7))
    assert [fit[i][1] for i in range(len(fit))] == fit.labels.tolist()
    assert fit.classes == [f"class{c}" for c in sorted(fit_classes)]
    again, _ = split_validation(_Labelled(LABELS), ValidationConfig(classes=0.3, seed=1), "classes")
    other, _ = split_validation(_Labelled(LABELS), ValidationConfig(classes=0.3, seed=2), "classes")
    assert np.array_equal(again.indices, fit.indices) and not np.array_equal(other.indices, fit.indices)


def test_k_folds_hold_out_every_training_class_exactly_once():
    held_per_fold = [
        set(split_validation(_Labelled(LABELS), ValidationConfig(folds=4, fold=k, seed=3), "classes")[1].labels.tolist()) for k in range(4)
    ]
    assert sorted(c for fold in held_per_fold for c in fold) == list(range(10))
    assert sorted(len(fold) for fold in held_per_fold) == [2, 2, 3, 3]
    assert [len(f) for f in validation_folds(np.arange(7), 3, 0)] == [3, 2, 2]


def test_named_classes_and_images_of_every_class():
    _, held = split_validation(_Labelled(LABELS), ValidationConfig(classes=["class2", 7]), "classes")
    assert set(held.labels.tolist()) == {2, 7}
    with pytest.raises(ConfigError, match="'class42' is not a training class"):
        split_validation(_Labelled(LABELS), ValidationConfig(classes=["class42"]), "classes")
    fit, held = split_validation(_Labelled(LABELS), ValidationConfig(classes=0.2), "images")  # a classifier's
    assert np.bincount(held.labels).tolist() == [1] * 10 and np.bincount(fit.labels).tolist() == [4] * 10
    assert not set(fit.indices) & set(held.indices)
    unlabelled = _Labelled(np.full(20, -1))
    fit, held = split_validation(unlabelled, ValidationConfig(classes=0.25), "classes")  # no classes: images
    assert len(held) == 5 and len(fit) == 15


class _Counting(DatasetWrapper, torch.utils.data.Dataset):
    """The test images (their labels, item names and the rest too), recording how many epochs had finished at each read."""

    def __init__(self, dataset, trainer):
        self.dataset, self.trainer, self.reads = dataset, trainer, []

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        self.reads.append(len(self.trainer.history))
        return self.dataset[i]


def _trainer(tmp_path, config, scripted=None):
    """A set-up trainer whose test images count their reads; ``scripted``: the validation Recall@1 of
    each epoch, given instead of the measured one (to place the best epoch)."""
    trainer = Trainer(config, tmp_path, progress=False)
    trainer.setup()
    views = trainer.eval_set.dataset  # the test split's views, kept (KeptViews) over the images
    views.dataset = _Counting(views.dataset, trainer)
    trainer.test_evaluations = 0
    if scripted is not None:
        evaluate = trainer.method.evaluate

        def scripted_evaluate(dataset, *args, **kwargs):
            trainer.test_evaluations += dataset is trainer.eval_set
            measured = evaluate(dataset, *args, **kwargs)
            return {**measured, "recall@1": scripted[len(trainer.history)]} if dataset is trainer.validation_set else measured

        trainer.method.evaluate = scripted_evaluate
    return trainer


@pytest.mark.slow
def test_a_run_chooses_on_validation_and_reads_the_test_split_once_at_the_end(tmp_path):
    trainer = _trainer(tmp_path, _config(), scripted=[0.9, 0.3])
    results = trainer.fit()
    test_images = len(trainer.eval_set)
    reads = trainer.eval_set.dataset.dataset.reads
    # nothing of the test split before the last epoch ended; then each image once, its view kept for the
    # second model (the final and the best model are each evaluated: their metrics differ, below)
    assert set(reads) == {2} and len(reads) == test_images and trainer.test_evaluations == 2
    assert all(row["evaluated_on"] == "validation" for row in results["history"])
    assert results["selection"] == "validation" and results["best"]["epoch"] == 1
    assert results["best"]["validation"]["recall@1"] == 0.9 and results["validation"]["final"]["recall@1"] == 0.3
    # best.pt holds epoch 1's weights: the same as that epoch's kept checkpoint
    best = load_checkpoint(tmp_path / "best.pt")
    epoch1 = load_checkpoint(sorted((tmp_path / "checkpoints").glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))[0])
    assert best["epoch"] == 1 and best["selected_by"] == {"metric": "recall@1", "value": 0.9, "on": "validation"}
    for name, weights in best["models"]["model"].items():
        assert torch.equal(weights, epoch1["models"]["model"][name]), name
    # its test metrics are that model's, and the final ones are the final model's
    model, _ = load_embedding_model(tmp_path / "best.pt")
    trainer.method.model.load_state_dict(model.state_dict())
    assert trainer.method.evaluate(trainer.eval_set, trainer.config, trainer.device) == results["best"]["test"]
    assert results["final"] != results["best"]["test"]


@pytest.mark.slow
def test_the_test_split_is_evaluated_once_when_the_last_epoch_is_the_best(tmp_path):
    trainer = _trainer(tmp_path, _config(), scripted=[0.1, 0.2])
    results = trainer.fit()
    assert len(trainer.eval_set.dataset.dataset.reads) == len(trainer.eval_set) and trainer.test_evaluations == 1
    assert results["best"]["epoch"] == 2 and results["best"]["test"] == results["final"]


def test_the_validation_classes_are_not_trained_on(tmp_path):
    trainer = Trainer(_config(), tmp_path, progress=False)
    trainer.setup()
    trained = {trainer.loader.dataset.dataset.dataset.labels[i] for i in trainer.loader.dataset.dataset.indices}
    validated = set(trainer.validation_set.dataset.dataset.labels.tolist())  # its views are kept (KeptViews)
    assert len(validated) == 2 and not trained & validated  # 25 % of 8 training classes
    assert trainer.method.label_loss.loss.num_classes == 6  # the proxies of the trained classes alone


def test_choosing_without_validation_data_is_refused():
    with pytest.raises(ConfigError, match="without data.validation is the test split"):
        build_config({"checkpoint": {"best": "map@r"}})
    with pytest.raises(ConfigError, match="data.validation.classes"):
        build_config({"data": {"validation": {"classes": 1.0}}})
    with pytest.raises(ConfigError, match="fold 2 does not exist"):
        build_config({"data": {"validation": {"folds": 2, "fold": 2}}})


@pytest.mark.slow
def test_a_run_told_not_to_test_never_reads_the_test_split(tmp_path):
    trainer = _trainer(tmp_path, _config(eval={"test": False}), scripted=[0.4, 0.2])
    results = trainer.fit()
    assert trainer.eval_set.dataset.dataset.reads == [] and results["final"] == {}
    assert results["best"]["epoch"] == 1 and "test" not in results["best"]
    with pytest.raises(ConfigError, match="eval.test: false"):
        build_config({"eval": {"test": False}})


def test_a_cohort_is_chosen_by_its_output_member_unless_told_otherwise():
    from metrictransfer.engine.results import selection_key

    rows = [{"epoch": 1, "evaluated_on": "validation", "member0/recall@1": 0.4, "ensemble/recall@1": 0.5, "recall@1": 0.5}]
    assert selection_key(_config(), "member0", rows) == "member0/recall@1"
    assert selection_key(_config(checkpoint={"best": "ensemble/recall@1"}), "member0", rows) == "ensemble/recall@1"
    assert selection_key(_config(), "model", [{"epoch": 1, "evaluated_on": "validation", "recall@1": 0.3}]) == "recall@1"
    with pytest.raises(ValueError, match="not a metric this run's validation gives"):
        selection_key(_config(checkpoint={"best": "map@r"}), "model", [{"epoch": 1, "evaluated_on": "validation", "recall@1": 0.3}])
