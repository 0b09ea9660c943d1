"""Every built-in dataset, built from tiny data in its real format, and every wrapper around one, is a
RetrievalDataset: the attributes evaluation, files of embeddings and provenance read, of the right types,
one per item, and each item's label the one ``labels`` gives it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from test_dataset_layouts import CARS_ROWS, INSHOP_ROWS, SOP_HEADER, _image, _inshop_lines, _write, _write_cars

from metrictransfer.config import DataConfig, ValidationConfig, build_config
from metrictransfer.data.cache import MemoryCache, memory_cache
from metrictransfer.data.holdout import LabelledSubset, split_holdout
from metrictransfer.data.multiview import MultiViewDataset
from metrictransfer.data.protocol import RetrievalDataset, query_gallery
from metrictransfer.data.registry import build_dataset
from metrictransfer.data.validation import split_validation
from metrictransfer.evaluation.evaluate import with_test_transform
from metrictransfer.evaluation.kept_views import KeptViews, keep_views
from metrictransfer.registry import DATASETS, register_dataset


def _cub(root: Path) -> None:
    names = {1: "001.Albatross", 2: "002.Gull", 101: "101.Wren", 102: "102.Finch"}
    images, labels = [], []
    for class_id, name in names.items():
        for k in range(3):
            image_id = len(images) + 1
            _image(root / "images" / name / f"{k}.jpg")
            images.append(f"{image_id} {name}/{k}.jpg")
            labels.append(f"{image_id} {class_id}")
    _write(root / "images.txt", images)
    _write(root / "image_class_labels.txt", labels)
    _write(root / "classes.txt", [f"{c} {name}" for c, name in names.items()])


def _sop(root: Path) -> None:
    for listing, first_class in (("Ebay_train.txt", 1), ("Ebay_test.txt", 11319)):
        rows = [(first_class + k // 2, f"chair_final/{first_class + k // 2}_{k % 2}.JPG") for k in range(6)]
        _write(root / listing, [SOP_HEADER] + [f"{i} {c} 4 {p}" for i, (c, p) in enumerate(rows, start=first_class)])
        for _, path in rows:
            _image(root / path)


def _inshop(root: Path) -> None:
    _write(root / "list_eval_partition.txt", _inshop_lines(INSHOP_ROWS))
    for path, _, _ in INSHOP_ROWS:
        _image(root / path)


def _folder(root: Path) -> None:
    for name in ("ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen"):
        for k in range(3):
            _image(root / name / f"{k}.jpg")


def _csv(root: Path) -> Path:
    rows = [f"imgs/{c}/{k}.jpg,{c},train" for c in ("a", "b") for k in range(3)]
    rows += [f"imgs/{c}/q{k}.jpg,{c},query" for c in ("c", "d") for k in range(2)]
    rows += [f"imgs/{c}/g{k}.jpg,{c},gallery" for c in ("c", "d") for k in range(2)]
    for row in rows:
        _image(root / row.split(",")[0])
    _write(root / "list.csv", ["path,label,split"] + rows)
    return root / "list.csv"


def _unlabelled(root: Path) -> None:
    for rel in ("a.jpg", "b/c.png", "b/d.jpg"):
        _image(root / rel)


def _data(dataset: str, tmp_path: Path) -> DataConfig:
    """The data section for ``dataset``, its tiny files written under ``tmp_path`` in the official format."""
    root = tmp_path / dataset
    settings = {"glyphs": {"num_classes": 2}}.get(dataset, {"root": str(root)})
    if dataset == "cars":
        _write_cars(root, CARS_ROWS)
    elif dataset == "csv":
        settings["root"] = str(_csv(root))
    elif dataset != "glyphs":
        {"cub": _cub, "sop": _sop, "inshop": _inshop, "folder": _folder, "unlabelled": _unlabelled}[dataset](root)
    return build_config({"data": {"dataset": dataset, "image_size": 32, **settings}}).data


def check_protocol(dataset: RetrievalDataset) -> None:
    """What every RetrievalDataset promises, each check with the bug it catches."""
    n = len(dataset)
    labels = dataset.labels
    # a wrapper giving the whole split's labels for a subset's items: samplers draw items that are not there
    assert isinstance(labels, np.ndarray) and labels.shape == (n,) and np.issubdtype(labels.dtype, np.integer)
    names = dataset.item_names
    # one name per item, in order, all different: a file of embeddings is matched row for row against them
    assert isinstance(names, Sequence) and len(names) == n and all(isinstance(name, str) for name in names)
    assert len(set(names)) == n, "item names must tell the items apart"
    # a subset relabelled without its class names following: reports and provenance name the wrong classes
    assert dataset.classes is None or (isinstance(dataset.classes, Sequence) and all(isinstance(c, str) for c in dataset.classes))
    if dataset.classes is not None and (labels >= 0).any():
        assert labels.max() < len(dataset.classes)
    # split and dataset name: a file of embeddings of another split or dataset is refused by them
    assert isinstance(dataset.split, str) and isinstance(dataset.dataset_name, str)
    # masks of the whole split on a subset: queries evaluated against the wrong gallery
    masks = query_gallery(dataset)
    assert (dataset.is_query is None) == (dataset.is_gallery is None)
    assert all(mask.shape == (n,) and mask.dtype == np.bool_ for mask in masks.values())
    # item names that are not the files: search and reports show, and provenance records, other images
    root = dataset.root
    assert root is None or (isinstance(root, Path) and all((root / name).is_file() for name in names))
    # an item whose label is not the one `labels` gives: the sampler's classes are not the batches' classes
    for i in range(n):
        item = dataset[i]
        assert item is not None and int(item[1]) == int(labels[i])


BUILT_IN = {"cub": 2, "cars": 2, "sop": 2, "inshop": 3, "folder": 2, "csv": 3, "unlabelled": 1, "glyphs": 2}  # splits


def test_every_built_in_dataset_is_listed():
    # a new built-in dataset without a case here goes unchecked
    assert sorted(name for name in DATASETS.names() if DATASETS.entry(name).component.__module__.startswith("metrictransfer.")) == sorted(
        BUILT_IN
    )


@pytest.mark.parametrize("dataset", sorted(BUILT_IN))
def test_every_split_of_every_built_in_dataset_is_a_retrieval_dataset(tmp_path, dataset):
    data = _data(dataset, tmp_path)
    splits = ["train", "test"] if BUILT_IN[dataset] > 1 else ["train"]
    for split in splits:
        built = build_dataset(data, split)
        check_protocol(built)
        assert (built.dataset_name, built.split) == (dataset, split)
        # the image path relative to the root for images in files; a generated name for glyphs
        assert (built.root is None) == (dataset == "glyphs")
    test = build_dataset(data, "test") if BUILT_IN[dataset] > 1 else None
    if dataset in ("inshop", "csv"):  # query and gallery evaluated together as the test split
        assert test is not None and test.is_query is not None and test.is_query.any() and (test.is_gallery == ~test.is_query).all()


def test_every_wrapper_gives_the_attributes_of_its_items(tmp_path):
    data = _data("inshop", tmp_path)
    test = build_dataset(data, "test")  # query and gallery: the masks must follow the items too
    views = with_test_transform(test, data)
    kept = keep_views(views, budget_gb=1.0)
    assert isinstance(views, MultiViewDataset) and isinstance(kept, KeptViews)
    share = kept.part(1, 2)  # a process's share of the evaluation: every second item from the second
    cached = memory_cache(test, image_size=32)
    assert isinstance(cached, MemoryCache)
    for wrapper in (views, kept, share, cached):
        check_protocol(wrapper)
        assert (wrapper.dataset_name, wrapper.split, wrapper.root, wrapper.classes) == (test.dataset_name, "test", test.root, test.classes)
    for whole in (views, kept, cached):  # the same items: the same attributes, nothing to look up through .dataset
        assert list(whole.item_names) == list(test.item_names) and np.array_equal(whole.is_query, test.is_query)
    assert list(share.item_names) == list(test.item_names)[1::2] and np.array_equal(share.is_gallery, test.is_gallery[1::2])

    queries, _ = split_holdout(test, 0.5)
    assert np.array_equal(queries.is_query, test.is_query[queries.indices])
    check_protocol(with_test_transform(queries, data))  # a wrapper of a wrapper


def test_held_out_and_validation_subsets_give_the_attributes_of_their_items(tmp_path):
    data = _data("folder", tmp_path)
    train = build_dataset(data, "train")  # 4 classes of 3 images
    fit, held = split_holdout(train, 0.3)
    with pytest.warns(UserWarning, match="noisy"):  # 2 validation classes
        by_class, other_classes = split_validation(train, ValidationConfig(classes=0.5), "classes")  # relabelled 0..C'-1
    assert by_class.label_map is not None
    for subset in (fit, held, by_class, other_classes):
        assert isinstance(subset, LabelledSubset)
        check_protocol(subset)
        assert list(subset.item_names) == [train.item_names[i] for i in subset.indices]
        assert (subset.dataset_name, subset.split, subset.root) == ("folder", "train", train.root)
        # each item keeps its class name, whatever its new label
        assert [subset.classes[label] for label in subset.labels] == [train.classes[label] for label in train.labels[subset.indices]]


@pytest.fixture
def registered():
    """Datasets registered by the test are gone after it."""
    snapshot = DATASETS.snapshot()
    yield
    DATASETS.restore(snapshot)


class _Generated:
    """A plug-in's generated data that sets no optional attribute."""

    def __init__(self, names: bool = True) -> None:
        self.labels = np.array([0, 0, 1, 1])
        if names:
            self.item_names = [f"shape {i}" for i in range(4)]

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> tuple[None, int]:
        return None, int(self.labels[i])


def test_a_plug_in_builder_gets_the_optional_attributes_and_must_name_its_items(registered):
    # a plug-in dataset written before the protocol: its missing optional attributes get defaults (no
    # caller has to look for them), but without item names no file of embeddings could be checked against it
    register_dataset("shapes", builder=True, needs_root=False)(lambda config, split: _Generated())
    register_dataset("unnamed_shapes", builder=True, needs_root=False)(lambda config, split: _Generated(names=False))
    shapes = build_dataset(build_config({"data": {"dataset": "shapes"}}).data, "train")
    assert (shapes.classes, shapes.is_query, shapes.is_gallery, shapes.root) == (None, None, None, None)
    assert (shapes.dataset_name, shapes.split) == ("shapes", "train")
    with pytest.raises(TypeError, match="dataset 'unnamed_shapes': its builder returned a _Generated without item_names"):
        build_dataset(build_config({"data": {"dataset": "unnamed_shapes"}}).data, "train")
