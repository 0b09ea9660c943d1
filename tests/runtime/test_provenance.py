"""Checkpoints record their training data; a run refuses a source model that trained on its evaluation
classes (a classifier: on its held-out images), unless allowed deliberately."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from metrictransfer.config import build_config
from metrictransfer.data.registry import build_dataset
from metrictransfer.engine import trainer
from metrictransfer.errors import DamagedCheckpointError, DataError
from metrictransfer.runtime.checkpoint import load_checkpoint, load_source_model, resolve_checkpoint, save_checkpoint
from metrictransfer.runtime.provenance import TRAINING_DATA_KEY, items_digest
from tests.data.test_image_data import _jpeg

pytestmark = pytest.mark.slow  # every test here trains a model (or uses a run trained for the module)

CLASSES = [f"class_{c}" for c in range(6)]
TINY = {
    "model": {"backbone": "resnet10t", "embedding_dim": 8},
    "optim": {"lr": 1e-3, "epochs": 1},
    "eval": {"recall_at": [1], "every": 0},
    "threads": 2,
}


def _folder(tmp_path):
    root = tmp_path / "shop"
    for c, name in enumerate(CLASSES):
        for k in range(6):
            _jpeg(root / name / f"{k}.jpg", (c * 40, 100, 200 - c * 30))
    return str(root)


def _config(data: dict, **sections):
    raw = json.loads(json.dumps(TINY))
    raw["data"] = {"image_size": 32, "classes_per_batch": 3, "images_per_class": 2, "views": 1, **data}
    raw.update(sections)
    return build_config(raw)


def _folder_data(root, train, test, **more):
    return {"dataset": "folder", "root": root, "train_classes": train, "test_classes": test, **more}


def _transfer(source, **more):
    return {"method": "transfer", "transfer": {"source_checkpoint": str(source), **more}}


def _setup(config, out):
    run = trainer.Trainer(config, out, progress=False)
    run.setup()
    return run


@pytest.fixture(scope="module")
def folder_source(tmp_path_factory):
    """A source trained on class_3..5 of a folder dataset (whose default test classes they are)."""
    tmp = tmp_path_factory.mktemp("folder")
    root = _folder(tmp)
    config = _config(_folder_data(root, CLASSES[3:], CLASSES[:3]), method="source")
    trainer.train(config, tmp / "source", progress=False)
    return root, tmp / "source"


def test_the_record_survives_save_and_load_and_is_covered_by_the_checksum(folder_source, tmp_path):
    root, source = folder_source
    _, _, record = load_source_model(source)
    assert record is not None
    assert record["dataset"] == "folder" and record["root"] == root and record["classes"] == CLASSES[3:]
    train = build_dataset(_config(_folder_data(root, CLASSES[3:], CLASSES[:3])).data, "train")
    assert record["num_images"] == 18 and record["items_sha256"] == items_digest(list(train.item_names))
    # a record changed after writing fails the checksum
    state = torch.load(resolve_checkpoint(source), weights_only=True)
    state[TRAINING_DATA_KEY]["classes"] = ["class_0"]
    torch.save(state, tmp_path / "tampered.pt")
    with pytest.raises(DamagedCheckpointError, match="checksum"):
        load_checkpoint(tmp_path / "tampered.pt")


def test_a_source_trained_on_the_targets_test_classes_is_refused(folder_source, tmp_path):
    root, source = folder_source
    config = _config(_folder_data(root, CLASSES[:3], CLASSES[3:]), **_transfer(source))
    with pytest.raises(DataError) as err:
        _setup(config, tmp_path / "target")
    message = str(err.value)
    assert "\n" not in message and str(source) in message and "3 of this run's evaluation classes" in message
    assert "class_3, class_4, class_5" in message and "transfer.allow_overlap: true" in message


def test_allow_overlap_runs_anyway(folder_source, tmp_path):
    root, source = folder_source
    config = _config(_folder_data(root, CLASSES[:3], CLASSES[3:]), **_transfer(source, allow_overlap=True))
    results = trainer.train(config, tmp_path / "target", progress=False)
    assert "recall@1" in results["final"]


def test_an_overlap_through_eval_data_is_refused_too(folder_source, tmp_path):
    root, source = folder_source
    config = _config(
        {"dataset": "glyphs", "num_classes": 3},
        **_transfer(source),
        eval={"recall_at": [1], "every": 0, "data": _folder_data(root, CLASSES[:4], CLASSES[4:])},
    )
    with pytest.raises(DataError, match="2 of this run's evaluation classes"):
        _setup(config, tmp_path / "target")


def test_a_source_of_another_dataset_is_fine_and_silent(folder_source, tmp_path):
    root, source = folder_source
    glyph_config = _config({"dataset": "glyphs", "num_classes": 3}, **_transfer(source))
    copy = tmp_path / "copy"  # the same folder at another root is another dataset
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _setup(glyph_config, tmp_path / "glyph-target")
        other_root = _folder(copy)
        _setup(_config(_folder_data(other_root, CLASSES[:3], CLASSES[3:]), **_transfer(source)), tmp_path / "copy-target")


def test_glyphs_demo_split_is_class_disjoint_so_a_normal_transfer_runs(tmp_path):
    data = {"dataset": "glyphs", "num_classes": 3}
    trainer.train(_config(data, method="source"), tmp_path / "source", progress=False)
    assert load_source_model(tmp_path / "source")[2]["classes"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = trainer.train(_config(data, **_transfer(tmp_path / "source")), tmp_path / "target", progress=False)
    assert "recall@1" in results["final"]


def test_an_old_checkpoint_without_the_record_runs_with_a_warning(folder_source, tmp_path):
    root, source = folder_source
    state = load_checkpoint(source)
    del state[TRAINING_DATA_KEY]
    save_checkpoint(state, tmp_path / "old.pt")
    config = _config(_folder_data(root, CLASSES[:3], CLASSES[3:]), **_transfer(tmp_path / "old.pt"))
    with pytest.warns(UserWarning, match="does not record its training data"):
        _setup(config, tmp_path / "target")


def test_a_classifier_source_that_trained_on_the_held_out_images_is_refused(tmp_path):
    root = _folder(tmp_path)
    data = _folder_data(root, CLASSES[:3], CLASSES[3:])
    # the source held out 2 of each class's 6 images; the target holds out 3: one of them per class trained the source
    trainer.train(_config({**data, "holdout_images": 0.34}, method="classifier"), tmp_path / "source", progress=False)
    teach = {"source_checkpoint": str(tmp_path / "source"), "distill": "hinton"}
    with pytest.raises(DataError, match=r"trained on 3 of this run's held-out images .*classifier.allow_overlap: true"):
        _setup(_config({**data, "holdout_images": 0.5}, method="classifier", classifier=teach), tmp_path / "target")
    # the same held-out images: nothing seen
    _setup(_config({**data, "holdout_images": 0.34}, method="classifier", classifier=teach), tmp_path / "same")
    allowed = {**teach, "allow_overlap": True}
    _setup(_config({**data, "holdout_images": 0.5}, method="classifier", classifier=allowed), tmp_path / "allowed")
