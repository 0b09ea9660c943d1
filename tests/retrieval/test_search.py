"""index and search: a gallery folder or CSV, exact and faiss search, the grid, and bad input."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from metrictransfer.cli import main
from metrictransfer.errors import MissingPackageError, SearchIndexError
from metrictransfer.retrieval import Gallery, list_images
from metrictransfer.runtime.checkpoint import load_checkpoint
from tests.helpers import COLOURS, figure_texts, make_checkpoint, saved_figures


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir()
        for i in range(4):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    checkpoint = make_checkpoint(root.parent / "model.pt")
    index = root.parent / "index"
    assert main(["index", "--checkpoint", str(checkpoint), "--images", str(root), "--out", str(index)]) == 0
    return root, checkpoint, index


def test_a_gallery_image_finds_itself_first_and_the_json_lists_k_neighbours(gallery, capsys):
    root, _, index = gallery
    capsys.readouterr()
    query = root / "green" / "2.png"
    assert main(["search", str(query), "--index", str(index), "--k", "5", "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert result["query"] == str(query) and result["label"] == "green"
    found = result["neighbours"]
    assert len(found) == 5
    assert found[0]["path"] == str(query.resolve()) and found[0]["distance"] == pytest.approx(0, abs=1e-3)
    assert [n["distance"] for n in found] == sorted(n["distance"] for n in found)
    assert {n["label"] for n in found} <= set(COLOURS)


def test_faiss_and_exact_search_give_the_same_neighbours(gallery, monkeypatch):
    root, _, index = gallery
    pytest.importorskip("faiss")
    queries = [str(root / "red" / "0.png"), str(root / "blue" / "3.png")]
    with_faiss = Gallery(index)
    assert with_faiss.faiss_index is not None
    exact = Gallery(index)
    exact.faiss_index = None
    a, b = with_faiss.search(queries, 12), exact.search(queries, 12)
    for row_a, row_b in zip(a, b):
        assert [n.distance for n in row_a] == pytest.approx([n.distance for n in row_b], abs=1e-4)
        assert row_a[0].path == row_b[0].path


def test_the_grid_is_an_image_with_a_row_per_query(gallery, tmp_path, capsys):
    root, _, index = gallery
    out = tmp_path / "grid.png"
    queries = [str(root / "red" / "1.png"), str(root / "green" / "0.png")]
    assert main(["search", *queries, "--index", str(index), "--k", "4", "--grid", str(out)]) == 0
    with Image.open(out) as image:
        width, height = image.size
    assert width > height > 0  # 2 rows of 5 thumbnails
    printed = capsys.readouterr().out
    assert printed.count("  1  ") == 2 and "grid:" in printed


def test_grid_titles_are_cut_in_the_middle_keeping_the_extension():
    from metrictransfer.retrieval.grid import file_name, middle_ellipsis

    assert middle_ellipsis("IMG_20230514_123456.jpg", 9) == "IMG_….jpg" and middle_ellipsis("a.png", 9) == "a.png"
    assert file_name("/x/Cafe\u0301 cre\u0300me/the\u0301.png") == "th\u00e9.png"  # a macOS name, composed


def test_the_grid_names_each_tile_by_file_and_class_legibly(tmp_path, monkeypatch, capsys):
    """The query and each neighbour name their file (a long one cut in the middle) and class, accents and
    spaces drawn by the font; right and wrong neighbours are marked; no title runs into the next tile's."""
    root = tmp_path / "photos"
    long_name = "IMG_20230514_écume de lait sur la tasse du matin.jpg"
    files = {"Café crème": [long_name, "mousse.png"], "Thé vert": ["feuille.png", "théière.png"]}
    for c, (name, images) in enumerate(files.items()):
        (root / name).mkdir(parents=True)
        for i, image in enumerate(images):
            Image.new("RGB", (40, 40), (200 * c, 60 * i, 100)).save(root / name / image)
    checkpoint, index, out = make_checkpoint(tmp_path / "model.pt"), tmp_path / "index", tmp_path / "grid.png"
    assert main(["index", "--checkpoint", str(checkpoint), "--images", str(root), "--out", str(index)]) == 0
    figures = saved_figures(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        query = root / "Café crème" / "mousse.png"
        assert main(["search", str(query), "--index", str(index), "--k", "4", "--grid", str(out)]) == 0
    assert not [w for w in caught if "missing from font" in str(w.message)]
    [fig] = figures
    texts = figure_texts(fig)
    assert texts[0] == "query\nmousse.png\nCafé crème"
    [cut] = [t for t in texts if "IMG_" in t]
    assert "…" in cut and "tin.jpg\nCafé crème" in cut
    assert any("théière.png\nThé vert" in t for t in texts)
    assert any("✓" in t for t in texts) and any("✗" in t for t in texts)
    fig.canvas.draw()
    boxes = sorted((ax.title.get_window_extent() for ax in fig.axes), key=lambda b: b.x0)
    assert all(left.x1 < right.x0 for left, right in zip(boxes, boxes[1:]))


def test_a_csv_gallery_with_labels(gallery, tmp_path):
    root, _, _ = gallery
    listing = tmp_path / "list.csv"
    rows = ["path,label"] + [f"{root / c / '0.png'},{c}" for c in COLOURS]
    listing.write_text("\n".join(rows) + "\n")
    listed = list_images(listing)
    assert listed.classes == sorted(COLOURS) and len(listed.paths) == 3


def test_an_index_built_by_another_model_is_refused(gallery, tmp_path, capsys):
    root, checkpoint, index = gallery
    other = make_checkpoint(tmp_path / "other.pt", seed=1)
    code = main(["search", str(root / "red" / "0.png"), "--index", str(index), "--checkpoint", str(other)])
    assert code == 2
    err = capsys.readouterr().err
    assert "built by a different model" in err and "metrictransfer index --checkpoint" in err
    state = load_checkpoint(checkpoint)  # the original model is still accepted
    assert state["output"] == "model"


def test_bad_queries_and_galleries_name_the_file(gallery, tmp_path, capsys):
    root, _, index = gallery
    assert main(["search", str(tmp_path / "missing.png"), "--index", str(index)]) == 2
    assert "query image not found" in capsys.readouterr().err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert main(["search", str(broken), "--index", str(index)]) == 2
    assert "cannot read image" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["index", "--checkpoint", str(gallery[1]), "--images", str(empty), "--out", str(tmp_path / "i")]) == 2
    assert "no images" in capsys.readouterr().err
    assert main(["search", str(root / "red" / "0.png"), "--index", str(tmp_path)]) == 2
    assert "metrictransfer index" in capsys.readouterr().err


# search embeds its queries with the index's exported model.onnx, without loading PyTorch


@pytest.mark.slow
def test_the_index_keeps_its_model_as_onnx_and_search_loads_no_torch(gallery):
    pytest.importorskip("onnxruntime")
    root, _, index = gallery
    meta = json.loads((index / "index.json").read_text())
    assert meta["query_model"]["file"] == "model.onnx" and (index / "model.onnx").is_file()
    code = (
        "import sys, json; from metrictransfer.cli import main; "
        f"status = main(['search', {str(root / 'red' / '0.png')!r}, '--index', {str(index)!r}, '--k', '3', '--json']); "
        "print(json.dumps({'status': status, 'torch': 'torch' in sys.modules, 'torchvision': 'torchvision' in sys.modules}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    results, loaded = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert loaded == {"status": 0, "torch": False, "torchvision": False}
    assert results[0]["neighbours"][0]["path"] == str((root / "red" / "0.png").resolve())


def test_the_onnx_model_and_the_runs_model_find_the_same_neighbours(gallery):
    pytest.importorskip("onnxruntime")
    root, checkpoint, index = gallery
    queries = [str(root / colour / f"{i}.png") for colour in ("red", "blue") for i in (1, 3)]
    fast, torch_model = Gallery(index), Gallery(index, checkpoint=checkpoint)
    assert type(fast.query_model).__name__ == "OnnxQueryModel"
    assert type(torch_model.query_model).__name__ == "CheckpointQueryModel"
    for a, b in zip(fast.search(queries, 6), torch_model.search(queries, 6)):
        assert [n.path for n in a] == [n.path for n in b]
        assert [n.distance for n in a] == pytest.approx([n.distance for n in b], abs=1e-4)


def test_exclude_self_leaves_the_query_out_and_still_gives_k(gallery, capsys):
    root, _, index = gallery
    query = root / "green" / "1.png"
    assert main(["search", str(query), "--index", str(index), "--k", "4", "--exclude-self", "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    paths = [n["path"] for n in result["neighbours"]]
    assert len(paths) == 4 and str(query.resolve()) not in paths


def test_a_replaced_model_file_is_refused(gallery, tmp_path):
    pytest.importorskip("onnxruntime")
    _, _, index = gallery
    copy = tmp_path / "index"
    copy.mkdir()
    for file in index.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(SearchIndexError, match="model.onnx is not the model this index was built with"):
        Gallery(copy)


def test_without_onnx_the_index_says_so_and_search_uses_the_checkpoint(gallery, tmp_path, monkeypatch):
    root, checkpoint, _ = gallery

    def no_onnx(*args, **kwargs):
        raise MissingPackageError("the onnx export needs the onnx package: pip install onnx")

    monkeypatch.setattr("metrictransfer.retrieval.build.export_model", no_onnx)
    out = tmp_path / "index"
    with pytest.warns(UserWarning, match="search will load PyTorch"):
        assert main(["index", "--checkpoint", str(checkpoint), "--images", str(root), "--out", str(out)]) == 0
    assert json.loads((out / "index.json").read_text())["query_model"] is None
    assert not (out / "model.onnx").exists()
    gallery_ = Gallery(out)
    assert type(gallery_.query_model).__name__ == "CheckpointQueryModel"
    assert gallery_.search([str(root / "red" / "2.png")], 1)[0][0].path == str((root / "red" / "2.png").resolve())
