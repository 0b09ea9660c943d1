"""Dataset readers against tiny trees built in the official distributed formats (no image is decoded)."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metrictransfer.data.custom import read_csv_list, read_folder, read_unlabelled
from metrictransfer.data.index import ImageIndex, contiguous_labels, require_files
from metrictransfer.data.official import EXPECTED, read_cars, read_cub, read_inshop, read_sop

_buffer = io.BytesIO()
Image.new("RGB", (8, 8), (200, 30, 30)).save(_buffer, format="JPEG")
JPEG = _buffer.getvalue()


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(JPEG)


def _write(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------- index


def test_contiguous_labels_follow_sorted_raw_ids():
    labels, unique = contiguous_labels([102, 7, 102, 55, 7])
    assert labels.dtype == np.int64
    assert labels.tolist() == [2, 0, 2, 1, 0]
    assert unique == [7, 55, 102]
    labels, unique = contiguous_labels(["id_9", "id_1", "id_9"])
    assert labels.tolist() == [1, 0, 1] and unique == ["id_1", "id_9"]
    labels, unique = contiguous_labels([])
    assert labels.shape == (0,) and unique == []


def test_check_files_counts_and_quotes_first_five(tmp_path):
    paths = [f"d/{i}.jpg" for i in range(10)]
    for p in paths[:3]:
        _image(tmp_path / p)
    index = ImageIndex(tmp_path, paths, np.zeros(10, dtype=np.int64), ["x"])
    assert len(index) == 10
    assert index.missing_files() == paths[3:]
    expected = f"demo: 7 of 10 listed images do not exist under {tmp_path}; first: d/3.jpg, d/4.jpg, d/5.jpg, d/6.jpg, d/7.jpg"
    with pytest.raises(FileNotFoundError, match=re.escape(expected) + "$"):
        index.check_files("demo")
    for p in paths[3:]:
        _image(tmp_path / p)
    index.check_files("demo")


def test_image_index_rejects_mismatched_lengths(tmp_path):
    with pytest.raises(ValueError, match="2 paths but 1 labels"):
        ImageIndex(tmp_path, ["a.jpg", "b.jpg"], np.zeros(1), ["x"])


def test_require_files_names_root_and_expected(tmp_path):
    missing_root = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        require_files(missing_root, EXPECTED["cub"], "cub")
    assert str(err.value) == (
        f"cub: root {missing_root} does not exist; expected a folder holding images.txt, image_class_labels.txt, classes.txt, images/"
    )
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        require_files(a_file, ["x"], "demo")
    (tmp_path / "images").write_text("not a folder")
    (tmp_path / "images.txt").write_text("")
    with pytest.raises(FileNotFoundError) as err:
        require_files(tmp_path, EXPECTED["cub"], "cub")
    message = str(err.value)
    for name in ("image_class_labels.txt", "classes.txt", "images/"):
        assert str(tmp_path / name.rstrip("/")) in message
    assert str(tmp_path / "images.txt") + "," not in message  # present, so not reported missing
    assert "images.txt, image_class_labels.txt, classes.txt, images/" in message


def test_registries():
    from metrictransfer.registry import DATASETS

    readers = {name: DATASETS.info(name, "reader") for name in DATASETS.names()}
    assert {name for name, kind in readers.items() if kind == "root"} == set(EXPECTED) | {"unlabelled"}
    assert set(EXPECTED) == {"cub", "cars", "sop", "inshop"}
    assert {name for name, kind in readers.items() if kind == "class_split"} == {"folder", "csv"}
    assert DATASETS["cub"] is read_cub and DATASETS["folder"] is read_folder and DATASETS["unlabelled"] is read_unlabelled


# --------------------------------------------------------------------------------------------- CUB

CUB_IMAGES = {  # class id -> number of images; ids span both halves of the 200-class numbering
    1: 2,
    2: 1,
    101: 2,
    102: 3,
}


def _cub_name(class_id: int) -> str:
    known = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross"}
    return known.get(class_id, f"{class_id:03d}.Bird_{class_id}")


@pytest.fixture
def cub_root(tmp_path) -> Path:
    root = tmp_path / "CUB_200_2011"
    images, labels, split = [], [], []
    image_id = 0
    # list the second-half classes first, to check that order in the file does not decide labels
    for class_id in (102, 1, 101, 2):
        for k in range(CUB_IMAGES[class_id]):
            image_id += 1
            rel = f"{_cub_name(class_id)}/{_cub_name(class_id).split('.')[1]}_{k:04d}_{image_id}.jpg"
            _image(root / "images" / rel)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {class_id}")
            split.append(f"{image_id} {image_id % 2}")  # the classification split, must be ignored
    _write(root / "images.txt", images)
    _write(root / "image_class_labels.txt", labels)
    _write(root / "classes.txt", [f"{c} {_cub_name(c)}" for c in range(1, 201)])
    _write(root / "train_test_split.txt", split)
    return root


def test_cub_class_halves(cub_root):
    splits = read_cub(cub_root)
    assert set(splits) == {"train", "test"}
    train, test = splits["train"], splits["test"]
    assert len(train) == 3 and len(test) == 5
    assert train.classes == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    assert test.classes == ["101.Bird_101", "102.Bird_102"]
    for index in (train, test):
        assert index.root == cub_root
        assert index.labels.dtype == np.int64
        assert sorted(set(index.labels.tolist())) == list(range(len(index.classes)))
        assert all(p.startswith("images/") for p in index.paths)
        for path, label in zip(index.paths, index.labels):
            assert path.split("/")[1] == index.classes[label]
    assert test.labels.tolist() == [1, 1, 1, 0, 0]  # file order kept: class 102 listed first
    train.check_files("cub train")
    test.check_files("cub test")


def test_cub_check_files_reports_missing_images(cub_root):
    test = read_cub(cub_root)["test"]
    (cub_root / test.paths[0]).unlink()
    (cub_root / test.paths[3]).unlink()
    assert test.missing_files() == [test.paths[0], test.paths[3]]
    with pytest.raises(
        FileNotFoundError,
        match=rf"^cub: 2 of 5 listed images do not exist under .*; first: "
        rf"{re.escape(test.paths[0])} \(images\.txt line {test.lines[0]}\), "
        rf"{re.escape(test.paths[3])} \(images\.txt line {test.lines[3]}\)$",
    ):
        test.check_files("cub")


def test_cub_missing_root_and_annotation(tmp_path, cub_root):
    with pytest.raises(
        FileNotFoundError,
        match=r"cub: root .*nope does not exist; expected a folder holding "
        r"images.txt, image_class_labels.txt, classes.txt, images/",
    ):
        read_cub(tmp_path / "nope")
    (cub_root / "image_class_labels.txt").unlink()
    with pytest.raises(FileNotFoundError) as err:
        read_cub(cub_root)
    assert str(cub_root / "image_class_labels.txt") in str(err.value)
    assert "images.txt, image_class_labels.txt, classes.txt, images/" in str(err.value)


def test_cub_malformed_lines(cub_root):
    lines = (cub_root / "images.txt").read_text().splitlines()
    lines[2] = "three 001.Black_footed_Albatross/x.jpg"
    _write(cub_root / "images.txt", lines)
    with pytest.raises(ValueError, match=r"images\.txt, line 3: expected '<image_id> <relative image path>'"):
        read_cub(cub_root)


def test_cub_class_outside_200(cub_root):
    with open(cub_root / "classes.txt", "a") as f:
        f.write("201 201.Extra\n")
    with pytest.raises(ValueError, match=r"classes\.txt: class id 201 is outside 1\.\.200"):
        read_cub(cub_root)


def test_cub_image_without_class(cub_root):
    lines = (cub_root / "image_class_labels.txt").read_text().splitlines()
    _write(cub_root / "image_class_labels.txt", lines[:-1])
    with pytest.raises(ValueError, match=r"image_class_labels\.txt: image 8 of images\.txt has no class"):
        read_cub(cub_root)


# -------------------------------------------------------------------------------------------- Cars

CARS_FIELDS = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
# (class, test flag); the flag is set against the metric-learning split on purpose
CARS_ROWS = [(1, 1), (150, 0), (98, 1), (99, 0), (1, 0), (196, 1), (2, 1), (150, 1)]


def _write_cars(root: Path, rows: list[tuple[int, int]], images: bool = True) -> None:
    from scipy.io import savemat

    annotations = np.zeros((1, len(rows)), dtype=[(f, object) for f in CARS_FIELDS])
    for i, (class_id, test) in enumerate(rows):
        rel = f"car_ims/{i + 1:06d}.jpg"
        if images:
            _image(root / rel)
        box = (np.uint8(3), np.uint8(4), np.uint16(60), np.uint16(40))
        annotations[0, i] = (rel, *box, np.uint8(class_id), np.uint8(test))
    names = np.empty((1, 196), dtype=object)
    for c in range(1, 197):
        names[0, c - 1] = f"Make{c} Model {2000 + c % 13}"
    (root / "car_ims").mkdir(parents=True, exist_ok=True)
    savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": names})


def test_cars_mat_has_real_layout(tmp_path):
    from scipy.io import loadmat

    _write_cars(tmp_path, CARS_ROWS, images=False)
    mat = loadmat(tmp_path / "cars_annos.mat")
    assert mat["annotations"].shape == (1, len(CARS_ROWS))
    assert mat["annotations"].dtype.names == CARS_FIELDS
    assert mat["annotations"][0, 0]["relative_im_path"].tolist() == ["car_ims/000001.jpg"]
    assert mat["class_names"].shape == (1, 196)


def test_cars_split_by_class_ignores_test_flag(tmp_path):
    _write_cars(tmp_path, CARS_ROWS)
    splits = read_cars(tmp_path)
    assert set(splits) == {"train", "test"}
    train, test = splits["train"], splits["test"]
    assert len(train) + len(test) == len(CARS_ROWS)  # every image used, whatever its flag
    assert train.paths == ["car_ims/000001.jpg", "car_ims/000003.jpg", "car_ims/000005.jpg", "car_ims/000007.jpg"]
    assert train.labels.tolist() == [0, 2, 0, 1]  # classes 1, 98, 1, 2
    assert train.classes == ["Make1 Model 2001", "Make2 Model 2002", "Make98 Model 2007"]
    assert test.paths == ["car_ims/000002.jpg", "car_ims/000004.jpg", "car_ims/000006.jpg", "car_ims/000008.jpg"]
    assert test.labels.tolist() == [1, 0, 2, 1]  # classes 150, 99, 196, 150
    assert test.classes == ["Make99 Model 2008", "Make150 Model 2007", "Make196 Model 2001"]
    train.check_files("cars")
    (tmp_path / "car_ims/000008.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"cars test: 1 of 4 listed images do not exist .*: car_ims/000008"):
        test.check_files("cars test")


def test_cars_single_annotation(tmp_path):
    _write_cars(tmp_path, [(5, 1)], images=False)
    splits = read_cars(tmp_path)
    assert splits["train"].paths == ["car_ims/000001.jpg"] and len(splits["test"]) == 0


def test_cars_errors(tmp_path):
    expected = r"cars: root .* does not exist; expected a folder holding cars_annos\.mat, car_ims/"
    with pytest.raises(FileNotFoundError, match=expected):
        read_cars(tmp_path / "cars")
    (tmp_path / "car_ims").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "cars_annos.mat"))):
        read_cars(tmp_path)
    _write_cars(tmp_path, [(1, 0), (197, 0)], images=False)
    with pytest.raises(ValueError, match=r"cars_annos\.mat: annotation 2 \(car_ims/000002\.jpg\) has class 197"):
        read_cars(tmp_path)


# --------------------------------------------------------------------------------------------- SOP

SOP_HEADER = "image_id class_id super_class_id path"


@pytest.fixture
def sop_root(tmp_path) -> Path:
    root = tmp_path / "Stanford_Online_Products"
    train = [
        (1, 1, "bicycle_final/111085122871_0.JPG"),
        (2, 1, "bicycle_final/111085122871_1.JPG"),
        (3, 5, "bicycle_final/111265328556_0.JPG"),
        (4, 3, "chair_final/111182689872_0.JPG"),
    ]
    test = [
        (5, 11319, 7, "sofa_final/111024013946_0.JPG"),
        (6, 11320, 7, "sofa_final/111109101389_0.JPG"),
        (7, 11319, 7, "sofa_final/111024013946_1.JPG"),
    ]
    _write(root / "Ebay_train.txt", [SOP_HEADER] + [f"{i} {c} {1 if 'bicycle' in p else 4} {p}" for i, c, p in train])
    _write(root / "Ebay_test.txt", [SOP_HEADER] + [f"{i} {c} {s} {p}" for i, c, s, p in test])
    for _, _, p in train:
        _image(root / p)
    for *_, p in test:
        _image(root / p)
    return root


def test_sop_splits(sop_root):
    splits = read_sop(sop_root)
    assert set(splits) == {"train", "test"}
    train, test = splits["train"], splits["test"]
    assert train.paths[0] == "bicycle_final/111085122871_0.JPG" and len(train) == 4
    assert train.labels.tolist() == [0, 0, 2, 1]
    assert train.classes == ["1", "3", "5"]
    assert test.labels.tolist() == [0, 1, 0] and test.classes == ["11319", "11320"]
    train.check_files("sop")
    (sop_root / test.paths[1]).unlink()
    with pytest.raises(FileNotFoundError, match=r"sop: 1 of 3 .*first: sofa_final/111109101389_0\.JPG \(Ebay_test\.txt line 3\)$"):
        test.check_files("sop")


def test_sop_errors(sop_root):
    lines = (sop_root / "Ebay_test.txt").read_text().splitlines()
    _write(sop_root / "Ebay_test.txt", lines[:3] + ["8 11321 sofa_final/x.JPG"] + lines[3:])
    expected = r"Ebay_test\.txt, line 4: expected '<image_id> <class_id> <super_class_id> <path>'"
    with pytest.raises(ValueError, match=expected):
        read_sop(sop_root)
    _write(sop_root / "Ebay_test.txt", lines[1:])
    expected = r"Ebay_test\.txt, line 1: expected the header 'image_id class_id super_class_id path'"
    with pytest.raises(ValueError, match=expected):
        read_sop(sop_root)
    (sop_root / "Ebay_test.txt").unlink()
    with pytest.raises(FileNotFoundError) as err:
        read_sop(sop_root)
    assert str(sop_root / "Ebay_test.txt") in str(err.value) and "Ebay_train.txt, Ebay_test.txt" in str(err.value)


def test_sop_full_size_indexing_is_fast(tmp_path):
    # the real lists: 59,551 train and 60,502 test images (120,053 lines); no image files needed
    def rows(n: int, first_id: int, first_class: int) -> list[str]:
        return [SOP_HEADER] + [
            f"{first_id + i} {first_class + i // 5} {i % 12 + 1} bicycle_final/{111085122871 + first_class + i // 5}_{i % 5}.JPG"
            for i in range(n)
        ]

    _write(tmp_path / "Ebay_train.txt", rows(59_551, 1, 1))
    _write(tmp_path / "Ebay_test.txt", rows(60_502, 59_552, 11_912))
    start = time.perf_counter()
    splits = read_sop(tmp_path)
    elapsed = time.perf_counter() - start
    assert len(splits["train"]) == 59_551 and len(splits["test"]) == 60_502
    assert splits["train"].labels.max() == len(splits["train"].classes) - 1 == 59_550 // 5
    assert elapsed < 2.0, f"indexing SOP took {elapsed:.2f} s"


# ------------------------------------------------------------------------------------------ In-Shop

INSHOP_ROWS = [
    ("img/WOMEN/Dresses/id_00000002/02_1_front.jpg", "id_00000002", "train"),
    ("img/WOMEN/Dresses/id_00000002/02_2_side.jpg", "id_00000002", "train"),
    ("img/MEN/Denim/id_00000080/01_1_front.jpg", "id_00000080", "train"),
    ("img/WOMEN/Skirts/id_00000001/02_1_front.jpg", "id_00000001", "gallery"),
    ("img/WOMEN/Skirts/id_00000001/02_2_side.jpg", "id_00000001", "query"),
    ("img/MEN/Tees_Tanks/id_00000007/01_1_front.jpg", "id_00000007", "query"),
    ("img/MEN/Tees_Tanks/id_00000007/01_2_side.jpg", "id_00000007", "gallery"),
    ("img/MEN/Tees_Tanks/id_00000007/01_3_back.jpg", "id_00000007", "gallery"),
    ("img/WOMEN/Blouses_Shirts/id_00000050/01_1_front.jpg", "id_00000050", "gallery"),  # gallery only
]


def _inshop_lines(rows, count=None) -> list[str]:
    # the real file pads columns with runs of spaces
    body = [f"{p}{' ' * (60 - len(p))}{item}     {status}" for p, item, status in rows]
    return [str(len(rows) if count is None else count), "image_name item_id evaluation_status"] + body


@pytest.fixture
def inshop_root(tmp_path) -> Path:
    root = tmp_path / "inshop"
    _write(root / "list_eval_partition.txt", _inshop_lines(INSHOP_ROWS))
    for p, _, _ in INSHOP_ROWS:
        _image(root / p)
    return root


def test_inshop_query_and_gallery_share_labels(inshop_root):
    splits = read_inshop(inshop_root)
    assert set(splits) == {"train", "query", "gallery"}
    train, query, gallery = splits["train"], splits["query"], splits["gallery"]
    assert (len(train), len(query), len(gallery)) == (3, 2, 4)
    assert train.classes == ["id_00000002", "id_00000080"] and train.labels.tolist() == [0, 0, 1]
    assert query.classes == gallery.classes == ["id_00000001", "id_00000007", "id_00000050"]
    assert query.paths == [
        "img/WOMEN/Skirts/id_00000001/02_2_side.jpg",
        "img/MEN/Tees_Tanks/id_00000007/01_1_front.jpg",
    ]
    assert query.labels.tolist() == [0, 1]
    assert gallery.labels.tolist() == [0, 1, 1, 2]
    for q_path, q_label in zip(query.paths, query.labels):
        item = q_path.split("/")[3]
        matches = [label for path, label in zip(gallery.paths, gallery.labels) if path.split("/")[3] == item]
        assert matches and all(label == q_label for label in matches)
    for index in splits.values():
        index.check_files("inshop")
    (inshop_root / gallery.paths[2]).unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"1 of 4 .*first: img/MEN/Tees_Tanks/id_00000007/01_3_back\.jpg \(list_eval_partition\.txt line 10\)$",
    ):
        gallery.check_files("inshop gallery")


def test_inshop_errors(inshop_root):
    partition = inshop_root / "list_eval_partition.txt"
    _write(partition, _inshop_lines(INSHOP_ROWS, count=52712))
    with pytest.raises(ValueError, match=r"list_eval_partition\.txt: line 1 says 52712 images but 9 are listed"):
        read_inshop(inshop_root)
    bad = INSHOP_ROWS[:4] + [("img/x.jpg", "id_1", "validation")] + INSHOP_ROWS[4:]
    _write(partition, _inshop_lines(bad))
    expected = r"list_eval_partition\.txt, line 7: expected '<image_name> <item_id> <train\|query\|gallery>'"
    with pytest.raises(ValueError, match=expected):
        read_inshop(inshop_root)
    _write(partition, _inshop_lines(INSHOP_ROWS)[1:])
    with pytest.raises(ValueError, match=r"list_eval_partition\.txt, line 1: expected the number of images"):
        read_inshop(inshop_root)
    partition.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(partition))):
        read_inshop(inshop_root)


# ------------------------------------------------------------------------------------------ custom


@pytest.fixture
def folder_root(tmp_path) -> Path:
    root = tmp_path / "folders"
    for name, files in {
        "cat": ["a.jpg", "b.PNG"],
        "dog": ["sub/c.jpeg", "d.webp", "notes.txt"],
        "eel": ["e.JPG"],
        "fox": ["f.tiff", "deep/er/g.bmp", ".hidden.jpg"],
    }.items():
        for f in files:
            _image(root / name / f)
    (root / "readme.txt").write_text("not a class")
    return root


def test_folder_default_split_is_first_half(folder_root):
    splits = read_folder(folder_root)
    train, test = splits["train"], splits["test"]
    assert train.classes == ["cat", "dog"] and test.classes == ["eel", "fox"]
    assert train.paths == ["cat/a.jpg", "cat/b.PNG", "dog/d.webp", "dog/sub/c.jpeg"]
    assert train.labels.tolist() == [0, 0, 1, 1]
    assert test.paths == ["eel/e.JPG", "fox/deep/er/g.bmp", "fox/f.tiff"]
    assert test.labels.tolist() == [0, 1, 1]
    train.check_files("folder")
    three = read_folder(folder_root, test_fraction=0.25)
    assert three["train"].classes == ["cat", "dog", "eel"] and three["test"].classes == ["fox"]


def test_folder_explicit_classes(folder_root):
    splits = read_folder(folder_root, train_classes=["fox", "cat"], test_classes=["dog"])
    assert splits["train"].classes == ["cat", "fox"] and splits["test"].classes == ["dog"]
    assert "eel/e.JPG" not in splits["train"].paths + splits["test"].paths
    only_test = read_folder(folder_root, test_classes=["eel"])
    assert only_test["train"].classes == ["cat", "dog", "fox"] and only_test["test"].classes == ["eel"]
    with pytest.raises(ValueError, match=r"train_classes names unknown class\(es\) 'wolf'"):
        read_folder(folder_root, train_classes=["wolf", "cat"])
    with pytest.raises(ValueError, match=r"'cat' are in both train_classes and test_classes"):
        read_folder(folder_root, train_classes=["cat", "dog"], test_classes=["cat"])
    with pytest.raises(ValueError, match="the test split would be empty"):
        read_folder(folder_root, train_classes=["cat", "dog", "eel", "fox"])


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"folder: root .*missing does not exist"):
        read_folder(tmp_path / "missing")
    _image(tmp_path / "only" / "a.jpg")
    _image(tmp_path / "loose.jpg")
    with pytest.raises(ValueError, match=r"at least 2 classes, found 1; 1 images lie directly under it"):
        read_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"class folder\(s\) empty .* hold no images"):
        read_folder(tmp_path)
    (tmp_path / "empty" / "b.png").write_bytes(JPEG)
    with pytest.raises(ValueError, match="the train split would be empty"):
        read_folder(tmp_path, test_fraction=0.9)


def test_csv_with_split_column(tmp_path):
    _write(
        tmp_path / "list.csv",
        [
            "path,label,split",
            "imgs/a.jpg,7,train",
            "imgs/b.jpg,12,train",
            "imgs/c.jpg,7,train",
            "imgs/q1.jpg,shoe,query",
            "imgs/g1.jpg,boot,gallery",
            "imgs/g2.jpg,shoe,Gallery",
            "",
        ],
    )
    splits = read_csv_list(tmp_path / "list.csv")
    assert set(splits) == {"train", "query", "gallery"}
    assert splits["train"].root == tmp_path
    assert splits["train"].labels.tolist() == [0, 1, 0] and splits["train"].classes == ["7", "12"]
    assert splits["query"].classes == splits["gallery"].classes == ["boot", "shoe"]
    assert splits["query"].labels.tolist() == [1] and splits["gallery"].labels.tolist() == [0, 1]
    assert splits["gallery"].paths == ["imgs/g1.jpg", "imgs/g2.jpg"]
    assert len(splits["train"].missing_files()) == 3


def test_csv_without_split_column(tmp_path):
    rows = [f"x/{i}.jpg,{c}" for i, c in enumerate([10, 2, 2, 33, 10, 4])]
    _write(tmp_path / "data" / "list.csv", ["path,label"] + rows)
    splits = read_csv_list(tmp_path / "data" / "list.csv")
    assert splits["train"].root == tmp_path / "data"
    assert splits["train"].classes == ["2", "4"] and splits["test"].classes == ["10", "33"]  # numeric order
    assert splits["train"].paths == ["x/1.jpg", "x/2.jpg", "x/5.jpg"]
    assert splits["test"].labels.tolist() == [0, 1, 0]


def test_csv_errors(tmp_path):
    csv_path = tmp_path / "list.csv"
    _write(csv_path, ["file,label", "a.jpg,1"])
    with pytest.raises(ValueError, match=r"list\.csv, line 1: header lacks column\(s\) path"):
        read_csv_list(csv_path)
    _write(csv_path, ["path,label", "a.jpg,1", " ,2"])
    with pytest.raises(ValueError, match=r"list\.csv, line 3: empty path"):
        read_csv_list(csv_path)
    _write(csv_path, ["path,label,split", "a.jpg,1,train", "b.jpg,2,val"])
    expected = r"list\.csv, line 3: unknown split value 'val'; .*one of train, test, query, gallery"
    with pytest.raises(ValueError, match=expected):
        read_csv_list(csv_path)
    with pytest.raises(FileNotFoundError, match="nope.csv does not exist"):
        read_csv_list(tmp_path / "nope.csv")


def test_unlabelled(tmp_path):
    for rel in ("b.png", "a/z.JPG", "a/y.gif", "c/readme.md", ".cache/x.jpg"):
        _image(tmp_path / rel)
    split = read_unlabelled(tmp_path)
    assert set(split) == {"train"}
    index = split["train"]
    assert index.paths == ["a/y.gif", "a/z.JPG", "b.png"]
    assert index.labels.tolist() == [-1, -1, -1] and index.labels.dtype == np.int64
    assert index.classes == []
    index.check_files("unlabelled")
    with pytest.raises(ValueError, match="no images under"):
        read_unlabelled(tmp_path / "c")


def test_numeric_class_names_sort_numerically(tmp_path):
    for name in ("1", "2", "10", "11"):
        _image(tmp_path / "tree" / name / "x.jpg")
    splits = read_folder(tmp_path / "tree")
    assert splits["train"].classes == ["1", "2"] and splits["test"].classes == ["10", "11"]
    _write(tmp_path / "list.csv", ["path,label", "a.jpg,7", "b.jpg,07", "c.jpg,3", "d.jpg,10"])
    splits = read_csv_list(tmp_path / "list.csv")
    assert splits["train"].classes == ["3", "07"]  # "07" and "7" stay different classes
    assert splits["test"].classes == ["7", "10"]
