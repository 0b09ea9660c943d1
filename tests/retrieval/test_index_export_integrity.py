"""index, search and export refuse what does not belong together, and a failure keeps the previous files.

Each case breaks its own copy of a good index (or export) and checks the error class and the words a
user needs; export failures must leave the previous FILE and FILE.json byte-identical.
"""

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from metrictransfer import model_export as export
from metrictransfer.cli import main
from metrictransfer.config import build_config
from metrictransfer.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    MissingFileError,
    MissingPackageError,
    OutputLocationError,
    SearchIndexError,
)
from metrictransfer.model_export import describes, description_path, export_model
from metrictransfer.retrieval import Gallery, build_index
from metrictransfer.retrieval.catalogue import CATALOGUE_FILE
from metrictransfer.retrieval.gallery import FAISS_FILE, INDEX_FILE
from metrictransfer.retrieval.grid import draw_grid
from metrictransfer.retrieval.vector_store import VECTORS_FILE
from metrictransfer.runtime.checkpoint import load_embedding_model, save_embedding_model
from tests.helpers import coloured_gallery, make_checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 12-image gallery, its checkpoint and index, and two indexes of other galleries by the same model:
    the same images in reverse order (same count, other contents) and 3 of them."""
    base = tmp_path_factory.mktemp("integrity")
    images = base / "gallery"
    coloured_gallery(images)
    checkpoint = make_checkpoint(base / "model.pt")
    build_index(checkpoint, images, base / "index")
    listed = sorted(images.rglob("*.png"))
    for name, chosen in {"reversed": listed[::-1], "small": listed[:3]}.items():
        (base / f"{name}.csv").write_text("path\n" + "".join(f"{p}\n" for p in chosen))
        build_index(checkpoint, base / f"{name}.csv", base / name)
    return {
        "base": base,
        "images": images,
        "checkpoint": checkpoint,
        "index": base / "index",
        "reversed": base / "reversed",
        "small": base / "small",
        "query": str(images / "red" / "0.png"),
    }


def _copy(setup, tmp_path, name: str = "index"):
    return shutil.copytree(setup[name], tmp_path / name)


def _edit_meta(index, **changes) -> None:
    meta = json.loads((index / INDEX_FILE).read_text())
    meta.update(changes)
    (index / INDEX_FILE).write_text(json.dumps(meta))


def _partials(folder) -> list:
    return [p.name for p in folder.iterdir() if p.name.endswith(".partial")]


# ------------------------------------------------------------------------------------------- index


def test_index_json_records_what_the_vectors_and_faiss_files_hold(setup):
    """Catches: index.json not recording the contents, so nothing could be checked on load."""
    meta = json.loads((setup["index"] / INDEX_FILE).read_text())
    record = meta["vectors"]
    vectors = np.load(setup["index"] / VECTORS_FILE)
    assert (record["count"], record["dim"]) == vectors.shape == (12, 8) and vectors.dtype == np.float32
    assert record["sha256"] == hashlib.sha256((setup["index"] / VECTORS_FILE).read_bytes()).hexdigest()
    assert meta["metric"] == "euclidean" and meta["index_format"] == 3
    pytest.importorskip("faiss")
    assert meta["faiss"]["ntotal"] == 12 and meta["faiss"]["d"] == 8 and meta["faiss"]["metric_type"] == "METRIC_L2"
    assert meta["faiss"]["sha256"] == hashlib.sha256((setup["index"] / FAISS_FILE).read_bytes()).hexdigest()


@pytest.mark.parametrize("other, differs", [("small", "ntotal 3 \\(expected 12\\)"), ("reversed", "contents")])
def test_a_faiss_index_of_another_gallery_is_refused(setup, tmp_path, other, differs):
    """Catches: search using a faiss.index that another build wrote (wrong neighbours, exit 0), whether
    its size differs or only its contents."""
    pytest.importorskip("faiss")
    index = _copy(setup, tmp_path)
    shutil.copy(setup[other] / FAISS_FILE, index / FAISS_FILE)
    with pytest.raises(SearchIndexError, match=f"faiss.index does not belong to vectors.npy .*{differs}.*metrictransfer index"):
        Gallery(index)


@pytest.mark.parametrize("other, differs", [("small", "shape \\(3, 8\\), not the float32 12 × 8"), ("reversed", "SHA-256 differs")])
def test_vectors_of_another_build_are_refused(setup, tmp_path, other, differs):
    """Catches: vectors.npy swapped or left over from another build being searched as if described."""
    index = _copy(setup, tmp_path)
    shutil.copy(setup[other] / VECTORS_FILE, index / VECTORS_FILE)
    with pytest.raises(SearchIndexError, match=f"vectors.npy .*{differs}"):
        Gallery(index)


@pytest.mark.parametrize("other", ["small", "reversed"])
def test_a_catalogue_of_another_build_is_refused(setup, tmp_path, other):
    """Catches: results named by another build's catalogue: the same ids 0..11 with other paths would
    label every neighbour wrongly without an error."""
    index = _copy(setup, tmp_path)
    shutil.copy(setup[other] / CATALOGUE_FILE, index / CATALOGUE_FILE)
    with pytest.raises(SearchIndexError, match="catalogue.sqlite does not list the 12 items index.json describes"):
        Gallery(index)


@pytest.mark.parametrize(
    "metric, words",
    [
        ("cosine", "metric_type METRIC_L2 \\(expected METRIC_INNER_PRODUCT\\)"),
        ("manhattan", "metric 'manhattan'; valid: euclidean, cosine"),
    ],
)
def test_an_edited_metric_is_refused(setup, tmp_path, metric, words):
    """Catches: an index.json metric edited by hand being used to search euclidean embeddings."""
    index = _copy(setup, tmp_path)
    _edit_meta(index, metric=metric)
    with pytest.raises(SearchIndexError, match=words):
        Gallery(index)


def test_a_model_configured_for_another_metric_is_refused(setup, tmp_path):
    """Catches: the same weights with a configuration measuring cosine searching a euclidean index."""
    model, _ = load_embedding_model(setup["checkpoint"])
    raw = {"model": {"backbone": "resnet10t", "embedding_dim": 8}, "data": {"image_size": 32}, "eval": {"metric": "cosine"}}
    cosine = save_embedding_model(model, build_config(raw), tmp_path / "cosine.pt")
    with pytest.raises(SearchIndexError, match="says metric 'euclidean' but the model .* measures 'cosine'"):
        Gallery(setup["index"], cosine)


def test_an_index_built_by_another_model_is_refused(setup, tmp_path):
    other = make_checkpoint(tmp_path / "other.pt", seed=1)
    with pytest.raises(SearchIndexError, match="built by a different model"):
        Gallery(setup["index"], other)


def test_an_index_of_the_previous_version_is_refused_with_the_rebuild_command(setup, tmp_path):
    """Catches: an index without fingerprints being trusted (its files were never checked)."""
    index = _copy(setup, tmp_path)
    meta = json.loads((index / INDEX_FILE).read_text())
    for key in ("index_format", "vectors"):
        del meta[key]
    meta["faiss"] = True
    (index / INDEX_FILE).write_text(json.dumps(meta))
    with pytest.raises(SearchIndexError, match="index format 1, from before .*rebuild it: metrictransfer index --checkpoint"):
        Gallery(index)


@pytest.mark.parametrize("missing", [INDEX_FILE, VECTORS_FILE, CATALOGUE_FILE, FAISS_FILE])
def test_a_missing_file_of_the_index_is_named(setup, tmp_path, missing):
    """Catches: a KeyError or silent fallback when one of the three files is gone."""
    if missing == FAISS_FILE:
        pytest.importorskip("faiss")
    index = _copy(setup, tmp_path)
    (index / missing).unlink()
    with pytest.raises(MissingFileError, match=f"{missing}.*metrictransfer index"):
        Gallery(index)


@pytest.mark.parametrize(
    "damaged, words",
    [
        (INDEX_FILE, "not readable JSON"),
        (VECTORS_FILE, "not a readable .npy"),
        (CATALOGUE_FILE, "not a readable SQLite catalogue"),
        (FAISS_FILE, "not a readable faiss index"),
    ],
)
def test_a_damaged_file_of_the_index_is_named(setup, tmp_path, damaged, words):
    """Catches: a JSONDecodeError, zipfile or faiss RuntimeError traceback instead of one line."""
    if damaged == FAISS_FILE:
        pytest.importorskip("faiss")
    index = _copy(setup, tmp_path)
    (index / damaged).write_bytes(b"garbage")
    with pytest.raises(SearchIndexError, match=f"{damaged}.*{words}|{words}.*rebuild"):
        Gallery(index)


def test_an_index_path_that_is_a_file_or_missing_is_named(setup, tmp_path):
    """Catches: 'no index.json in model.pt/' or a NotADirectoryError for --index pointing at a file."""
    with pytest.raises(SearchIndexError, match="is a file, not an index folder"):
        Gallery(setup["checkpoint"])
    with pytest.raises(SearchIndexError, match=f"did you mean --index {setup['index']}"):
        Gallery(setup["index"] / INDEX_FILE)
    with pytest.raises(MissingFileError, match="no index folder"):
        Gallery(tmp_path / "nowhere")


def test_an_interrupted_rebuild_leaves_no_half_faiss_file_and_is_refused(setup, tmp_path, monkeypatch):
    """Catches: faiss writing straight to faiss.index (a kill leaves half of one), and a half-rebuilt
    folder (new embeddings, old faiss.index and index.json) being searched."""
    pytest.importorskip("faiss")
    index = _copy(setup, tmp_path)
    before = (index / FAISS_FILE).read_bytes()

    real_write_bytes = Path.write_bytes

    def interrupted(path, data):  # Ctrl-C half-way through writing the faiss file
        if FAISS_FILE not in path.name:
            return real_write_bytes(path, data)
        real_write_bytes(path, b"half an index")
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_index(setup["checkpoint"], setup["base"] / "small.csv", index, overwrite=True)
    assert (index / FAISS_FILE).read_bytes() == before and not _partials(index)
    monkeypatch.undo()
    with pytest.raises(SearchIndexError, match="vectors.npy holds float32 of shape \\(3, 8\\), not the float32 12 × 8"):
        Gallery(index)


@pytest.mark.parametrize("k", [0, -3])
def test_k_below_one_is_refused(setup, k):
    """Catches: a topk/faiss traceback for --k 0 or a negative k."""
    with pytest.raises(ConfigError, match=f"--k must be at least 1, got {k}"):
        Gallery(setup["index"]).search([setup["query"]], k)


def test_k_above_the_gallery_size_returns_the_whole_gallery(setup):
    for exact in (False, True):
        gallery = Gallery(setup["index"])
        if exact:
            gallery.faiss_index = None
        [found] = gallery.search([setup["query"]], 100)
        assert len(found) == 12 and len({n.path for n in found}) == 12


def test_bad_queries_are_named(setup, tmp_path):
    gallery = Gallery(setup["index"])
    with pytest.raises(MissingFileError, match="query image not found"):
        gallery.search([str(tmp_path)])  # a folder is not an image
    with pytest.raises(ConfigError, match="no query images"):
        gallery.search([])


def _csv(tmp_path, text: str):
    listing = tmp_path / "list.csv"
    listing.write_text(text)
    return listing


@pytest.mark.parametrize(
    "case, error, words",
    [
        ("empty folder", MissingFileError, "no images"),
        ("no such path", MissingFileError, "does not exist"),
        ("not a csv", ConfigError, "neither a folder of images nor a .csv"),
        ("csv without path column", DataError, "expected a header with a 'path' column"),
        ("csv with a short row", DataError, "line 3: no label"),
        ("csv listing a missing image", MissingFileError, "lists 1 image\\(s\\) that do not exist"),
        ("checkpoint is not one", CheckpointError, "checkpoint"),
        ("out is a file", OutputLocationError, "not a folder"),
    ],
)
def test_bad_index_inputs_raise_one_named_error(setup, tmp_path, case, error, words):
    """Catches: each careless input ending in a traceback (KeyError, IsADirectoryError, FileExistsError)."""
    image = setup["images"] / "red" / "0.png"
    checkpoint, images, out = setup["checkpoint"], setup["images"], tmp_path / "out"
    if case == "empty folder":
        images = tmp_path / "empty"
        images.mkdir()
    elif case == "no such path":
        images = tmp_path / "nothing"
    elif case == "not a csv":
        images = tmp_path / "list.txt"
        images.write_text(f"path\n{image}\n")
    elif case == "csv without path column":
        images = _csv(tmp_path, f"file,label\n{image},red\n")
    elif case == "csv with a short row":
        images = _csv(tmp_path, f"path,label\n{image},red\n{image}\n")
    elif case == "csv listing a missing image":
        images = _csv(tmp_path, f"path\n{image}\n{tmp_path / 'gone.png'}\n")
    elif case == "checkpoint is not one":
        checkpoint = tmp_path / "notes.pt"
        checkpoint.write_text("not a checkpoint")
    elif case == "out is a file":
        out.write_text("taken")
    with pytest.raises(error, match=words):
        build_index(checkpoint, images, out)


def test_the_grid_refuses_a_format_matplotlib_cannot_write(setup, tmp_path):
    [found] = Gallery(setup["index"]).search([setup["query"]], 2)
    with pytest.raises(ConfigError, match="no .txt files; use .png"):
        draw_grid([setup["query"]], [found], tmp_path / "grid.txt")
    assert not (tmp_path / "grid.txt").exists() and not _partials(tmp_path)


def test_cli_search_refuses_an_unwritable_grid_format_before_searching(setup, tmp_path, capsys):
    assert main(["search", "--index", str(setup["index"]), setup["query"], "--grid", str(tmp_path / "g.txt")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "matplotlib writes no .txt files" in captured.err


def test_cli_index_with_a_csv_lacking_its_path_column(setup, tmp_path, capsys):
    listing = _csv(tmp_path, "file\nx.png\n")
    code = main(["index", "--checkpoint", str(setup["checkpoint"]), "--images", str(listing), "--out", str(tmp_path / "i")])
    err = capsys.readouterr().err
    assert code == 2 and "'path' column" in err and "Traceback" not in err


def test_cli_search_with_a_foreign_faiss_index(setup, tmp_path, capsys):
    pytest.importorskip("faiss")
    index = _copy(setup, tmp_path)
    shutil.copy(setup["small"] / FAISS_FILE, index / FAISS_FILE)
    code = main(["search", setup["query"], "--index", str(index)])
    captured = capsys.readouterr()
    assert code == 2 and "does not belong to vectors.npy" in captured.err and "metrictransfer index" in captured.err
    assert captured.out == ""  # no neighbours printed


# ------------------------------------------------------------------------------------------ export


@pytest.fixture()
def previous(setup, tmp_path):
    """A good safetensors export and its description, and their bytes."""
    out = tmp_path / "model.safetensors"
    export_model(setup["checkpoint"], "safetensors", out)
    return out, out.read_bytes(), description_path(out).read_bytes()


def _unchanged(previous) -> bool:
    out, model_bytes, description_bytes = previous
    return out.read_bytes() == model_bytes and description_path(out).read_bytes() == description_bytes and not _partials(out.parent)


def test_the_description_records_the_exported_files_sha256(previous):
    """Catches: a description that cannot be matched to the file it describes."""
    out, model_bytes, description_bytes = previous
    assert json.loads(description_bytes)["sha256"] == hashlib.sha256(model_bytes).hexdigest()
    assert describes(out)


def test_a_failed_check_keeps_the_previous_export_and_description(setup, previous, monkeypatch):
    """Catches: the old behaviour, deleting a good FILE (and keeping its FILE.json) when a new export fails."""
    real = export._EXPORTERS["safetensors"]
    monkeypatch.setitem(export._EXPORTERS, "safetensors", lambda m, x, out: real(m, x, out) + 1e-3)
    with pytest.raises(ConfigError, match="away from the PyTorch model.*a previous one is unchanged"):
        export_model(setup["checkpoint"], "safetensors", previous[0])
    assert _unchanged(previous)


def test_an_interrupted_export_keeps_the_previous_export_and_description(setup, previous, monkeypatch):
    """Catches: Ctrl-C while the exporter writes leaving a truncated FILE (or a stray temporary)."""

    def interrupted(model, example, out):
        out.write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setitem(export._EXPORTERS, "safetensors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(setup["checkpoint"], "safetensors", previous[0])
    assert _unchanged(previous)


def test_a_crash_between_the_file_and_its_description_is_recognisable(setup, previous, tmp_path, monkeypatch):
    """Catches: a stale FILE.json that reads as if it described the new FILE."""
    out = previous[0]
    other = make_checkpoint(tmp_path / "other.pt", seed=1)

    def crash(text, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "atomic_write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        export_model(other, "safetensors", out)
    assert out.read_bytes() != previous[1] and description_path(out).read_bytes() == previous[2]
    assert not describes(out)


@pytest.mark.parametrize(
    "case, error, words",
    [
        ("unknown format", ConfigError, "unknown export format 'tflite'"),
        ("checkpoint is not one", CheckpointError, "checkpoint"),
        ("no checkpoint", MissingFileError, "no checkpoint at"),
        ("no such model", CheckpointError, "holds no embedding model 'member9'"),
        ("out is a folder", OutputLocationError, "is a folder; name the file"),
        ("onnx not installed", MissingPackageError, "pip install onnx"),
    ],
)
def test_bad_export_inputs_raise_one_named_error_and_keep_the_previous_files(setup, previous, monkeypatch, case, error, words):
    """Catches: ValueError/ImportError/IsADirectoryError tracebacks, and a failure touching the previous files."""
    out, checkpoint, fmt, name = previous[0], setup["checkpoint"], "safetensors", None
    if case == "unknown format":
        fmt = "tflite"
    elif case == "checkpoint is not one":
        checkpoint = out.parent / "notes.pt"
        checkpoint.write_text("not a checkpoint")
    elif case == "no checkpoint":
        checkpoint = out.parent / "missing.pt"
    elif case == "no such model":
        name = "member9"
    elif case == "out is a folder":
        out = out.parent
    elif case == "onnx not installed":
        monkeypatch.setitem(sys.modules, "onnx", None)
        fmt = "onnx"
        out = out.with_name("model.onnx")
    with pytest.raises(error, match=words):
        export_model(checkpoint, fmt, out, name)
    assert _unchanged(previous) and not out.with_name("model.onnx").exists()


def test_cli_export_of_a_file_that_is_not_a_checkpoint(previous, capsys):
    out = previous[0]
    notes = out.parent / "notes.pt"
    notes.write_text("not a checkpoint")
    code = main(["export", "--checkpoint", str(notes), "--format", "safetensors", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "notes.pt" in err and "Traceback" not in err
    assert _unchanged(previous)


def test_temporaries_a_killed_export_or_index_build_left_are_removed_by_the_next(setup, previous, tmp_path):
    out = previous[0]
    stale = [out.parent / f".{out.name}.k2j4x9aq.partial", out.parent / f".{out.name}.json.zz9y8x7w.partial"]
    unrelated = out.parent / ".other.pt.k2j4x9aq.partial"  # another file's: maybe still being written
    for path in [*stale, unrelated]:
        path.write_bytes(b"half")
    export_model(setup["checkpoint"], "safetensors", out)
    assert not any(p.exists() for p in stale) and unrelated.exists()

    index = _copy(setup, tmp_path)
    left = index / f".{FAISS_FILE}.a1b2c3d4.partial"
    left.write_bytes(b"half")
    build_index(setup["checkpoint"], setup["images"], index, overwrite=True)
    assert not left.exists()
