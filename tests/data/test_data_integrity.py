"""Data that cannot be trusted is refused by name: splits sharing images or classes, garbage annotation
files, and embeddings files whose rows are not the items they are used for."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_dataset_layouts import INSHOP_ROWS, SOP_HEADER, _image, _inshop_lines, _write, _write_cars
from torch import nn

from metrictransfer.config import DataConfig, build_config
from metrictransfer.data.custom import read_csv_list, read_folder
from metrictransfer.data.holdout import split_holdout
from metrictransfer.data.inspect import inspect_dataset
from metrictransfer.data.official import read_cars, read_cub, read_inshop, read_sop
from metrictransfer.data.registry import build_dataset
from metrictransfer.errors import ConfigError, DataError, MetricTransferError
from metrictransfer.evaluation.embeddings_file import (
    EmbeddingsFile,
    check_same_items,
    compare_items,
    load_embeddings,
    save_embeddings,
)
from metrictransfer.evaluation.evaluate import embed_split
from metrictransfer.methods.transfer import load_source_table


def _csv(path: Path, rows: list[str], images: bool = False) -> Path:
    """A CSV list (header first) in `path`; with `images`, a small JPEG for every listed path."""
    _write(path, rows)
    if images:
        for row in rows[1:]:
            _image(path.parent / row.split(",")[0])
    return path


# ------------------------------------------------------------------------------- shared images


def test_csv_splits_sharing_images_name_the_file_the_count_and_the_lines(tmp_path):
    # Bug caught: an image evaluated after being trained on, also when spelled ./x or d/../x.
    listing = _csv(
        tmp_path / "list.csv",
        [
            "path,label,split",
            "imgs/a.jpg,1,train",
            "imgs/b.jpg,1,train",
            "imgs/c.jpg,2,train",
            "./imgs/a.jpg,3,test",
            "imgs/x/../b.jpg,3,test",
            "imgs/d.jpg,4,test",
        ],
    )
    with pytest.raises(DataError) as err:
        read_csv_list(listing)
    message = str(err.value)
    assert message.startswith(f"{listing}: 2 image(s) are listed in both train and test")
    assert "'imgs/a.jpg' (list.csv lines 2 and 5)" in message and "'imgs/b.jpg' (list.csv lines 3 and 6)" in message
    assert "\n" not in message


def test_the_check_runs_when_a_dataset_is_built_and_inspected(tmp_path):
    # Bug caught: the readers check, but training (build_dataset) or `data inspect` goes around them.
    listing = _csv(tmp_path / "list.csv", ["path,label,split", "a.jpg,1,train", "b.jpg,2,test", "a.jpg,3,test"], images=True)
    for build in (
        lambda: build_dataset(DataConfig(dataset="csv", root=str(listing)), "train"),
        lambda: inspect_dataset("csv", str(listing)),
    ):
        with pytest.raises(DataError, match=r"list\.csv: 1 image\(s\) are listed in both train and test, first: 'a\.jpg'"):
            build()


def test_inshop_image_listed_as_query_and_gallery_is_refused(tmp_path):
    # Bug caught: a query that finds itself in the gallery (recall@1 = 1 for free).
    rows = INSHOP_ROWS + [(INSHOP_ROWS[4][0], INSHOP_ROWS[4][1], "gallery")]  # a query image again, as gallery
    _write(tmp_path / "list_eval_partition.txt", _inshop_lines(rows))
    (tmp_path / "img").mkdir()
    with pytest.raises(DataError) as err:
        read_inshop(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'list_eval_partition.txt'}: 1 image(s) are listed in both query and gallery")
    assert f"'{INSHOP_ROWS[4][0]}' (list_eval_partition.txt lines 7 and 12)" in str(err.value)


def test_sop_test_list_repeating_a_training_image_names_both_files(tmp_path):
    # Bug caught: SOP's two lists are separate files; a leak between them must be found and located.
    _write(tmp_path / "Ebay_train.txt", [SOP_HEADER, "1 1 1 bike/1_0.JPG", "2 1 1 bike/1_1.JPG"])
    _write(tmp_path / "Ebay_test.txt", [SOP_HEADER, "3 9 2 sofa/9_0.JPG", "4 9 2 bike/1_1.JPG"])
    with pytest.raises(DataError, match=re.escape("'bike/1_1.JPG' (Ebay_train.txt line 3, Ebay_test.txt line 3)")):
        read_sop(tmp_path)


def test_cub_image_listed_under_two_ids_in_both_halves(tmp_path):
    # Bug caught: the class halves are disjoint by id, but one file can still be listed twice.
    _write(tmp_path / "images.txt", ["1 001.A/a.jpg", "2 101.B/b.jpg", "3 001.A/a.jpg"])
    _write(tmp_path / "image_class_labels.txt", ["1 1", "2 101", "3 101"])
    _write(tmp_path / "classes.txt", [f"{c} {c:03d}.Bird" for c in range(1, 201)])
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match=re.escape("'images/001.A/a.jpg' (images.txt lines 1 and 3)")):
        read_cub(tmp_path)


def test_cars_image_listed_in_both_halves(tmp_path):
    from scipy.io import loadmat, savemat

    _write_cars(tmp_path, [(1, 0), (150, 0)], images=False)
    mat = loadmat(tmp_path / "cars_annos.mat")
    mat["annotations"][0, 1]["relative_im_path"] = np.array(["car_ims/000001.jpg"])
    savemat(tmp_path / "cars_annos.mat", {k: v for k, v in mat.items() if not k.startswith("__")})
    with pytest.raises(DataError, match=r"1 image\(s\) are listed in both train and test, first: 'car_ims/000001\.jpg'"):
        read_cars(tmp_path)


def test_leak_checks_keep_full_size_sop_indexing_fast(tmp_path):
    # Bug caught: a quadratic check that makes indexing 120k images slow.
    def rows(n: int, first_id: int, first_class: int) -> list[str]:
        return [SOP_HEADER] + [
            f"{first_id + i} {first_class + i // 5} {i % 12 + 1} bicycle_final/{first_id + i}_{i % 5}.JPG" for i in range(n)
        ]

    _write(tmp_path / "Ebay_train.txt", rows(59_551, 1, 1))
    _write(tmp_path / "Ebay_test.txt", rows(60_502, 59_552, 11_912))
    start = time.perf_counter()
    splits = read_sop(tmp_path)
    assert time.perf_counter() - start < 2.0
    assert len(splits["train"]) == 59_551 and len(splits["test"]) == 60_502


# ------------------------------------------------------------------------------ shared classes


def test_csv_split_column_sharing_a_class_names_the_class_and_lines(tmp_path):
    # Bug caught: an explicit split column that trains on a class evaluated later.
    listing = _csv(
        tmp_path / "list.csv",
        [
            "path,label,split",
            "a.jpg,cat,train",
            "b.jpg,dog,train",
            "c.jpg,dog,test",
            "d.jpg,eel,test",
        ],
    )
    with pytest.raises(DataError) as err:
        read_csv_list(listing)
    assert str(err.value).startswith(f"{listing}: 1 class(es) are in both train and test, first: 'dog' (list.csv lines 3 and 4)")
    assert "class-disjoint" in str(err.value)


def test_csv_query_and_gallery_share_classes_but_not_with_train(tmp_path):
    # Bug caught: refusing In-Shop-like lists (query and gallery share classes by design), or letting
    # a training class into the gallery.
    rows = ["path,label,split", "t.jpg,1,train", "q.jpg,2,query", "g.jpg,2,gallery"]
    splits = read_csv_list(_csv(tmp_path / "ok.csv", rows))
    assert splits["query"].classes == splits["gallery"].classes == ["2"]
    with pytest.raises(DataError, match=r"1 class\(es\) are in both train and gallery, first: '1' \(bad\.csv lines 2 and 5\)"):
        read_csv_list(_csv(tmp_path / "bad.csv", rows + ["g2.jpg,1,gallery"]))


def test_inshop_training_item_in_the_gallery_is_refused(tmp_path):
    # Bug caught: In-Shop's train and query/gallery items are disjoint in the protocol; a list that is not.
    rows = INSHOP_ROWS + [("img/WOMEN/Dresses/id_00000002/03_1_front.jpg", "id_00000002", "gallery")]
    _write(tmp_path / "list_eval_partition.txt", _inshop_lines(rows))
    (tmp_path / "img").mkdir()
    with pytest.raises(
        DataError,
        match=r"list_eval_partition\.txt: 1 class\(es\) are in both train and gallery, first: "
        r"'id_00000002' \(list_eval_partition\.txt lines 3 and 12\)",
    ):
        read_inshop(tmp_path)


def test_sop_class_in_both_lists_is_refused(tmp_path):
    _write(tmp_path / "Ebay_train.txt", [SOP_HEADER, "1 1 1 bike/1_0.JPG", "2 5 1 bike/5_0.JPG"])
    _write(tmp_path / "Ebay_test.txt", [SOP_HEADER, "3 5 1 bike/5_1.JPG"])
    with pytest.raises(
        DataError,
        match=r"1 class\(es\) are in both train and test, first: '5' "
        r"\(Ebay_train\.txt line 3, Ebay_test\.txt line 2\)",
    ):
        read_sop(tmp_path)


def test_class_lists_apply_to_csv_and_are_refused_where_they_would_be_ignored(tmp_path):
    # Bug caught: data.train_classes silently ignored (csv, fixed splits), so the split is not the one asked for.
    rows = ["path,label"] + [f"{c}{k}.jpg,{c}" for c in "abcd" for k in range(2)]
    listing = _csv(tmp_path / "list.csv", rows, images=True)
    test = build_dataset(DataConfig(dataset="csv", root=str(listing), test_classes=["a"]), "test")
    assert test.classes == ["a"] and test.item_names == ["a0.jpg", "a1.jpg"]
    assert read_csv_list(listing, train_classes=["b"], test_classes=["c"])["train"].paths == ["b0.jpg", "b1.jpg"]
    with pytest.raises(ConfigError, match="has a split column"):
        read_csv_list(_csv(tmp_path / "split.csv", ["path,label,split", "a.jpg,1,train", "b.jpg,2,test"]), train_classes=["1"])
    with pytest.raises(ConfigError, match="apply to csv and folder data only"):
        build_dataset(DataConfig(dataset="glyphs", train_classes=["A"]), "train")


def test_folder_split_stays_clean(tmp_path):
    for name in ("a", "b", "c"):
        _image(tmp_path / name / "x.jpg")
    splits = read_folder(tmp_path)
    assert splits["train"].paths == ["a/x.jpg", "b/x.jpg"] and splits["test"].paths == ["c/x.jpg"]


# --------------------------------------------------------------------------- garbage annotations


def _cars_garbage(root: Path, kind: str) -> None:
    from scipy.io import savemat

    (root / "car_ims").mkdir()
    if kind == "text":
        (root / "cars_annos.mat").write_text("<html>404 Not Found</html>\n" * 20)
    elif kind == "empty":
        (root / "cars_annos.mat").write_bytes(b"")
    elif kind == "no annotations":
        savemat(root / "cars_annos.mat", {"class_names": np.array(["a", "b"], dtype=object)})
    else:  # annotations without the struct fields
        savemat(root / "cars_annos.mat", {"annotations": np.arange(3), "class_names": np.array(["a"], dtype=object)})


@pytest.mark.parametrize(
    "kind, message",
    [
        ("text", r"cars_annos\.mat is not a readable MATLAB file \(.*\); expected the cars_annos\.mat of the Cars-196"),
        ("empty", r"cars_annos\.mat is not a readable MATLAB file"),
        ("no annotations", r"cars_annos\.mat: no variable 'annotations'"),
        ("no fields", r"cars_annos\.mat: 'annotations' lacks field\(s\) relative_im_path, class"),
    ],
)
def test_garbage_cars_annotations(tmp_path, kind, message):
    # Bug caught: scipy's own exception (or a KeyError) escaping as a traceback without the file.
    _cars_garbage(tmp_path, kind)
    with pytest.raises(DataError, match=message):
        read_cars(tmp_path)


def test_cub_images_txt_malformed_or_not_text(tmp_path):
    _write(tmp_path / "image_class_labels.txt", ["1 1"])
    _write(tmp_path / "classes.txt", ["1 001.A"])
    (tmp_path / "images").mkdir()
    _write(tmp_path / "images.txt", ["1 001.A/a.jpg", "2"])
    with pytest.raises(DataError, match=r"images\.txt, line 2: expected '<image_id> <relative image path>', got '2'"):
        read_cub(tmp_path)
    (tmp_path / "images.txt").write_bytes(b"1 001.A/a.jpg\n2 \xff\xfe.jpg\n")
    with pytest.raises(DataError, match=r"images\.txt, line 2: not UTF-8 text"):
        read_cub(tmp_path)


def test_sop_and_inshop_headers(tmp_path):
    _write(tmp_path / "Ebay_train.txt", ["id class super path", "1 1 1 a.JPG"])
    _write(tmp_path / "Ebay_test.txt", [SOP_HEADER])
    with pytest.raises(DataError, match=r"Ebay_train\.txt, line 1: expected the header 'image_id class_id super_class_id path'"):
        read_sop(tmp_path)
    lines = _inshop_lines(INSHOP_ROWS)
    _write(tmp_path / "list_eval_partition.txt", lines[:1] + ["name item status"] + lines[2:])
    (tmp_path / "img").mkdir()
    with pytest.raises(DataError, match=r"list_eval_partition\.txt, line 2: expected the header"):
        read_inshop(tmp_path)


def test_csv_that_is_not_text(tmp_path):
    (tmp_path / "list.csv").write_bytes(b"path,label\na.jpg,\xff\n")
    with pytest.raises(DataError, match=r"list\.csv: not UTF-8 text"):
        read_csv_list(tmp_path / "list.csv")
    (tmp_path / "list.csv").write_bytes(b'path,label\n"' + b"x" * 200_000 + b'",1\n')  # a binary file, say
    with pytest.raises(DataError, match=r"list\.csv: not a readable CSV file \(field larger than field limit"):
        read_csv_list(tmp_path / "list.csv")


@pytest.mark.parametrize("dataset", ["cars", "cub", "sop"])
def test_data_inspect_prints_one_line_for_garbage(tmp_path, capsys, dataset):
    # Bug caught: a malformed file reaching the user as a traceback instead of one line naming it.
    from metrictransfer.cli import main

    if dataset == "cars":
        _cars_garbage(tmp_path, "text")
        name = "cars_annos.mat"
    elif dataset == "cub":
        for file in ("images.txt", "image_class_labels.txt", "classes.txt"):
            _write(tmp_path / file, ["x y z"])
        (tmp_path / "images").mkdir()
        name = "images.txt"
    else:
        _write(tmp_path / "Ebay_train.txt", ["not a header"])
        _write(tmp_path / "Ebay_test.txt", [SOP_HEADER])
        name = "Ebay_train.txt"
    capsys.readouterr()
    assert main(["data", "inspect", "--dataset", dataset, "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / name) in err and "Traceback" not in err


def test_errors_are_the_library_hierarchy(tmp_path):
    # Bug caught: a plain ValueError / FileNotFoundError that the command line no longer catches.
    with pytest.raises(MetricTransferError):
        read_csv_list(tmp_path / "missing.csv")
    with pytest.raises(MetricTransferError):
        read_sop(tmp_path)
    with pytest.raises(MetricTransferError):
        load_embeddings(tmp_path / "missing.npz")
    with pytest.raises(MetricTransferError):
        inspect_dataset("cub")


# ------------------------------------------------------------------------------ embeddings files


def test_embeddings_files_name_their_items_and_old_files_still_load(tmp_path):
    # Bug caught: the new fields not written, or files of the previous version no longer readable.
    data = EmbeddingsFile(
        np.eye(3, dtype=np.float32),
        np.arange(3),
        items=np.array(["a.jpg", "b.jpg", "c.jpg"]),
        dataset="csv",
        split="train",
        metric="cosine",
    )
    save_embeddings(tmp_path / "new.npz", data)
    back = load_embeddings(tmp_path / "new.npz")
    assert back.items.tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    assert (back.dataset, back.split, back.metric) == ("csv", "train", "cosine")
    np.savez(tmp_path / "old.npz", embeddings=np.eye(3, dtype=np.float32), labels=np.arange(3), paths=np.array(["x", "y", "z"]))
    old = load_embeddings(tmp_path / "old.npz")
    assert old.items is None and old.dataset is None and old.split is None and old.paths.tolist() == ["x", "y", "z"]


def test_compare_items_says_count_order_or_content():
    assert compare_items(["a", "b"], ["a", "b"]) is None
    assert compare_items(["a"], ["a", "b"]) == "1 items where 2 are expected"
    assert compare_items(["b", "a"], ["a", "b"]) == "the same items in a different order: row 0 is 'b' where 'a' is expected"
    assert compare_items(["a", "c"], ["a", "b"]) == "1 of 2 rows name other items: row 1 is 'c' where 'b' is expected"


def test_check_same_items_for_ensembles(tmp_path):
    # Bug caught: an ensemble concatenating rows of different images that happen to share labels.
    emb, labels = np.eye(4, dtype=np.float32), np.array([0, 0, 1, 1])
    items = np.array(["a", "b", "c", "d"])
    first = EmbeddingsFile(emb, labels, items=items, dataset="csv", split="test")
    check_same_items([first, EmbeddingsFile(emb, labels, items=items.copy(), dataset="csv", split="test")], ["1.npz", "2.npz"])
    check_same_items([first, EmbeddingsFile(emb, labels)], ["1.npz", "old.npz"])  # nothing to compare but labels
    swapped = EmbeddingsFile(emb, labels, items=np.array(["b", "a", "c", "d"]))  # same labels, rows swapped
    with pytest.raises(
        DataError,
        match=r"^2\.npz differs from 1\.npz: the same items in a different order: row 0 is 'b' "
        r"where 'a' is expected; an ensemble needs",
    ):
        check_same_items([first, swapped], ["1.npz", "2.npz"])
    other = EmbeddingsFile(emb, labels, items=np.array(["a", "b", "c", "e"]))
    with pytest.raises(DataError, match=r"1 of 4 rows name other items: row 3 is 'e' where 'd' is expected"):
        check_same_items([first, other], ["1.npz", "2.npz"])
    with pytest.raises(DataError, match=r"2\.npz holds the split 'train' but 1\.npz the split 'test'"):
        check_same_items([first, EmbeddingsFile(emb, labels, split="train")], ["1.npz", "2.npz"])
    with pytest.raises(DataError, match=r"2\.npz: 'labels' differs from 1\.npz's"):
        check_same_items([first, EmbeddingsFile(emb, labels[::-1].copy())], ["1.npz", "2.npz"])
    with pytest.raises(DataError, match=r"2\.npz holds 3 items but 1\.npz holds 4"):
        check_same_items([first, EmbeddingsFile(emb[:3], labels[:3])], ["1.npz", "2.npz"])
    with pytest.raises(DataError, match=r"'is_query' differs"):
        check_same_items([first, EmbeddingsFile(emb, labels, is_query=np.ones(4, bool), is_gallery=np.ones(4, bool))], ["1.npz", "2.npz"])


# ------------------------------------------------------------------------ transfer.source_embeddings


class _Pool(nn.Module):
    """A stand-in embedding model: 2 × 2 average pooling of the image, 12 numbers per item."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(images, 2).flatten(1)


def _run_config(tmp_path: Path, dataset: str, **data):
    if dataset == "csv":
        rows = ["path,label"] + [f"imgs/{c}/{k}.jpg,{c}" for c in range(4) for k in range(3)]
        data["root"] = str(_csv(tmp_path / "list.csv", rows, images=True))
    else:
        data.setdefault("num_classes", 2)
    raw = {"data": {"dataset": dataset, "image_size": 32, **data}, "model": {"backbone": "resnet10t", "embedding_dim": 12}, "device": "cpu"}
    return build_config(raw)


def _embed(config, split: str, out: Path) -> Path:
    save_embeddings(out, embed_split(_Pool(), config, split))
    return out


def _reversed(path: Path, out: Path) -> Path:
    data = load_embeddings(path)
    for key in ("embeddings", "labels", "paths", "items"):
        setattr(data, key, getattr(data, key)[::-1].copy())
    save_embeddings(out, data)
    return out


@pytest.mark.parametrize("dataset", ["csv", "glyphs"])
def test_source_embeddings_must_be_the_training_split_in_its_order(tmp_path, dataset):
    # Bugs caught: training against the test split's embeddings, or against the right images in another
    # order (same count, so the old row-count check let both through), for data with and without files.
    config = _run_config(tmp_path, dataset)
    train_set = build_dataset(config.data, "train")
    train_file = _embed(config, "train", tmp_path / "train.npz")
    table = load_source_table(str(train_file), train_set)
    assert table.shape == (len(train_set), 12)
    assert load_embeddings(train_file).items.tolist() == train_set.item_names

    test_file = _embed(config, "test", tmp_path / "test.npz")
    with pytest.raises(
        DataError,
        match=r"test\.npz holds embeddings of the 'test' split, but transfer trains on the 'train' "
        r"split; embed the training split with the source checkpoint: metrictransfer embed --checkpoint "
        r"SOURCE --split train",
    ):
        load_source_table(str(test_file), train_set)

    backwards = _reversed(train_file, tmp_path / "backwards.npz")
    expected = re.escape(f"row 0 is {train_set.item_names[-1]!r} where {train_set.item_names[0]!r} is expected")
    with pytest.raises(
        DataError,
        match=r"backwards\.npz is not the training set's embeddings: the same items in a "
        rf"different order: {expected}; embed the training split",
    ):
        load_source_table(str(backwards), train_set)


def test_csv_test_split_of_the_same_size_is_refused_by_its_items(tmp_path):
    # Bug caught: a file whose split field was lost or edited; its item names still tell.
    config = _run_config(tmp_path, "csv")
    train_set = build_dataset(config.data, "train")
    data = load_embeddings(_embed(config, "test", tmp_path / "test.npz"))
    assert len(data.labels) == len(train_set)
    for claimed in (None, "train"):
        data.split = claimed
        save_embeddings(tmp_path / "claimed.npz", data)
        with pytest.raises(DataError, match=r"6 of 6 rows name other items: row 0 is 'imgs/2/0\.jpg' where 'imgs/0/0\.jpg'"):
            load_source_table(str(tmp_path / "claimed.npz"), train_set)


def test_glyph_names_change_with_seed_and_subset(tmp_path):
    # Bug caught: glyph files embedded with another glyph_seed or class subset accepted by row count.
    config = _run_config(tmp_path, "glyphs")
    train_set = build_dataset(config.data, "train")
    other_seed = _embed(_run_config(tmp_path, "glyphs", glyph_seed=1), "train", tmp_path / "seed1.npz")
    with pytest.raises(DataError, match="embed the training split"):
        load_source_table(str(other_seed), train_set)
    names = set(train_set.item_names)
    assert not names & set(build_dataset(_run_config(tmp_path, "glyphs", glyph_seed=1).data, "train").item_names)
    assert not names & set(build_dataset(_run_config(tmp_path, "glyphs", image_size=40).data, "train").item_names)
    bigger = build_dataset(_run_config(tmp_path, "glyphs", num_classes=3).data, "train")
    assert len(bigger) > len(train_set)


def test_files_without_item_names_or_of_another_dataset_are_refused(tmp_path):
    # Bug caught: a file of the previous version accepted on its row count alone (the original bug).
    config = _run_config(tmp_path, "glyphs")
    train_set = build_dataset(config.data, "train")
    n = len(train_set)
    np.savez(
        tmp_path / "old.npz",
        embeddings=np.zeros((n, 4), np.float32),
        labels=np.asarray(train_set.labels),
        paths=np.array([f"glyphs:train:{i}" for i in range(n)]),
    )
    with pytest.raises(
        DataError,
        match=r"old\.npz does not name its items .*; embed the training split with the source "
        r"checkpoint: metrictransfer embed --checkpoint SOURCE --split train",
    ):
        load_source_table(str(tmp_path / "old.npz"), train_set)
    data = load_embeddings(_embed(config, "train", tmp_path / "train.npz"))
    data.dataset = "cub"
    save_embeddings(tmp_path / "cub.npz", data)
    with pytest.raises(DataError, match=r"cub\.npz holds embeddings of dataset 'cub', but training uses 'glyphs'"):
        load_source_table(str(tmp_path / "cub.npz"), train_set)


def test_holdout_subset_names_its_items(tmp_path):
    # Bug caught: held-out training images still counted as rows of the table.
    config = _run_config(tmp_path, "glyphs")
    fit, _ = split_holdout(build_dataset(config.data, "train"), 0.25)
    full = _embed(config, "train", tmp_path / "train.npz")
    with pytest.raises(DataError, match=r"data\.holdout_images holds some of its images out"):
        load_source_table(str(full), fit)
    assert fit.split == "train" and fit.dataset_name == "glyphs" and len(fit.item_names) == len(fit)


def test_inshop_embeddings_keep_query_and_gallery_and_items(tmp_path):
    # Bug caught: `embed` of In-Shop dropping is_query / is_gallery, so `evaluate --query-gallery` cannot use it.
    _write(tmp_path / "list_eval_partition.txt", _inshop_lines(INSHOP_ROWS))
    for path, _, _ in INSHOP_ROWS:
        _image(tmp_path / path)
    config = build_config({"data": {"dataset": "inshop", "root": str(tmp_path), "image_size": 32, "transform": "paper"}, "device": "cpu"})
    data = embed_split(_Pool(), config, "test")
    status = {path: s for path, _, s in INSHOP_ROWS}
    assert data.items.tolist() == data.paths.tolist() and (data.dataset, data.split) == ("inshop", "test")
    assert [status[p] == "query" for p in data.items] == data.is_query.tolist()
    assert (data.is_gallery == ~data.is_query).all()
