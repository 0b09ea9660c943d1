"""Indexes built from an embeddings table (``embed --images … --out TABLE``): the same answers as an index of
the images, IVF-Flat lists on disk that survive a move and updates, tables of other models refused, and a
build sharded over two torchrun processes equal to one process's."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from metrictransfer.cli import main
from metrictransfer.errors import SearchIndexError
from metrictransfer.retrieval import Gallery, build_index, update
from metrictransfer.retrieval.gallery import exact_knn, for_metric
from tests.helpers import COLOURS, coloured_gallery, make_checkpoint

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """180 images; a table of the first 150 (50 per colour: IVF-Flat gets 3 lists) and one of the other 30,
    embedded by the CLI."""
    base = tmp_path_factory.mktemp("table-index")
    coloured_gallery(base / "images", images=60)
    checkpoint = make_checkpoint(base / "model.pt")
    for name, numbers in {"first": range(50), "more": range(50, 60)}.items():
        listing = base / f"{name}.csv"
        listing.write_text("path,label\n" + "".join(f"images/{c}/{i}.png,{c}\n" for c in COLOURS for i in numbers))
        assert main(["embed", "--checkpoint", str(checkpoint), "--images", str(listing), "--out", str(base / name)]) == 0
    return base, checkpoint


def _index(setup, source, out, kind):
    base, checkpoint = setup
    assert main(["index", "--checkpoint", str(checkpoint), "--images", str(source), "--out", str(out), "--kind", kind]) == 0
    return out


def _answers(gallery, queries, k=10):
    return [[(n.path, n.label, round(n.distance, 5)) for n in row] for row in gallery.search_vectors(queries, k)]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_an_index_of_a_table_answers_as_the_index_of_its_images(setup, tmp_path, kind):
    """Catches: rows, paths or class names of a table mismatched in the index (wrong names on right
    distances), and an IVF whose on-disk lists lose items in the merge."""
    base, _ = setup
    from_table = _index(setup, base / "first", tmp_path / "from-table", kind)
    from_images = _index(setup, base / "first.csv", tmp_path / "from-images", kind)
    table, images = Gallery(from_table), Gallery(from_images)
    queries = np.asarray(images.vectors[::7])
    assert _answers(table, queries) == _answers(images, queries)
    assert {n.label for row in table.search_vectors(queries, 3) for n in row} == set(COLOURS)
    meta = json.loads((from_table / "index.json").read_text())
    assert meta["count"] == 150 and meta["faiss"]["params"].get("nlist", 3) == 3 and meta["classes"] == sorted(COLOURS)
    assert (meta["faiss"]["ivfdata"] is not None) == (kind == "ivf") == (from_table / "faiss.ivfdata").is_file()
    assert not [p for p in from_table.iterdir() if p.name.startswith(".shards-")]  # the shards' work folder is gone


def test_on_disk_lists_follow_a_moved_folder_and_print_nothing(setup, tmp_path, capfd):
    """Catches: the index file naming its lists by the build's absolute path (a moved or copied index
    reads the old file, or fails), and faiss's C++ messages reaching stdout (they would corrupt --json)."""
    base, _ = setup
    built = _index(setup, base / "first", tmp_path / "built", "ivf")
    moved = shutil.move(str(built), tmp_path / "moved")
    capfd.readouterr()
    gallery = Gallery(moved)
    found = gallery.search_vectors(np.asarray(gallery.vectors[:2]), 5)
    assert capfd.readouterr().out == ""
    assert [row[0].distance for row in found] == [0.0, 0.0]
    assert main(["search", str(base / "images" / "red" / "0.png"), "--index", str(moved), "--json"]) == 0
    json.loads(capfd.readouterr().out)  # nothing but the JSON on stdout


def test_updates_write_new_lists_and_leave_the_previous_ones_unread(setup, tmp_path, monkeypatch):
    """Catches: an update writing into the previous generation's memory-mapped lists (a crash would leave
    an index that no longer matches its records), and added or removed items lost in the new lists."""
    base, _ = setup
    index = _index(setup, base / "first", tmp_path / "index", "ivf")
    before = _sha(index / "faiss.ivfdata")
    monkeypatch.setattr(update, "atomic_write_text", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):  # killed just before the switch to the new generation
        update.update_index(index, add=base / "more", remove="0,1")
    monkeypatch.undo()
    assert _sha(index / "faiss.ivfdata") == before and Gallery(index).count == 150  # the previous index answers
    assert main(["index", "--index", str(index), "--add", str(base / "more"), "--remove", "0,1"]) == 0
    gallery = Gallery(index)
    meta = gallery.meta
    assert gallery.count == 178 and meta["faiss"]["ivfdata"]["file"] == "faiss.g1.ivfdata"  # the crashed one's replaced
    assert sorted(p.name for p in index.glob("faiss*")) == ["faiss.g1.index", "faiss.g1.ivfdata"]
    queries = np.asarray(gallery.vectors[::9])
    d, rows = exact_knn(for_metric(queries, gallery.metric), for_metric(np.asarray(gallery.vectors), gallery.metric), 10, gallery.metric)
    found = gallery.search_vectors(queries, 10, effort=meta["faiss"]["params"]["nlist"])  # every list: exact
    assert [[n.id for n in row] for row in found] == gallery.ids[rows].tolist()
    added = {n.path for row in gallery.search_vectors(queries, 178) for n in row}
    assert str(base / "images" / "red" / "59.png") in added and 0 not in {n.id for row in found for n in row}


def test_adding_a_table_to_an_index_of_images(setup, tmp_path):
    """Catches: --add TABLE taking the table's rows under other paths or classes than the images'."""
    base, _ = setup
    index = _index(setup, base / "first.csv", tmp_path / "index", "flat")
    assert main(["index", "--index", str(index), "--add", str(base / "more")]) == 0
    whole = _index(setup, base / "images", tmp_path / "whole", "flat")
    queries = np.asarray(Gallery(whole).vectors[::11])
    assert _answers(Gallery(index), queries, 180) == _answers(Gallery(whole), queries, 180)


def test_a_table_the_model_did_not_write_is_refused(setup, tmp_path, capsys):
    """Catches: an index of another model's rows (every distance between query and gallery meaningless),
    a table without a fingerprint taken on trust, and a dataset split's rows taken as image paths."""
    base, checkpoint = setup
    other = make_checkpoint(tmp_path / "other.pt", seed=1)
    with pytest.raises(SearchIndexError, match="was embedded by a model with other weights.*metrictransfer embed --checkpoint"):
        build_index(other, base / "first", tmp_path / "other-index")
    unmarked = shutil.copytree(base / "more", tmp_path / "unmarked")
    meta = json.loads((unmarked / "meta.json").read_text())
    del meta["model"]["fingerprint"]
    (unmarked / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SearchIndexError, match="records no weights fingerprint"):
        build_index(checkpoint, unmarked, tmp_path / "unmarked-index")
    assert not (tmp_path / "other-index").exists() and not (tmp_path / "unmarked-index").exists()  # nothing left behind
    index = _index(setup, base / "first", tmp_path / "index", "flat")
    assert main(["index", "--index", str(index), "--add", str(unmarked)]) != 0
    assert "records no weights fingerprint" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_build_the_index_one_process_builds(setup, tmp_path):
    """Catches: shards that overlap or leave rows out, a merge that drops a shard, ranks other than 0
    writing or printing, and a work folder left in the index."""
    base, checkpoint = setup
    one = _index(setup, base / "first", tmp_path / "one", "ivf")
    two = tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "metrictransfer.cli", "index"]
    command += ["--checkpoint", str(checkpoint), "--images", str(base / "first"), "--out", str(two), "--kind", "ivf"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("150 images") == 1, done.stdout  # printed once
    a, b = Gallery(one), Gallery(two)
    assert a.meta["faiss"]["measured"] == b.meta["faiss"]["measured"] and b.meta["faiss"]["ntotal"] == 150
    queries = np.asarray(a.vectors)
    assert _answers(a, queries, 150) == _answers(b, queries, 150)
    assert sorted(p.name for p in two.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in one.iterdir() if not p.name.startswith(".")
    )
    assert not [p for p in two.iterdir() if p.name.startswith(".shards-")]


def test_a_rebuild_over_an_updated_index_leaves_only_its_own_files_all_recorded(setup, tmp_path):
    """Catches: an --overwrite build leaving the replaced index's generation files behind (gigabytes of
    vectors and lists nobody reads), and index files the manifest does not list (a later --overwrite
    could not tell them from a person's)."""
    base, checkpoint = setup
    index = _index(setup, base / "first", tmp_path / "index", "ivf")
    assert main(["index", "--index", str(index), "--remove", "0"]) == 0
    assert (index / "faiss.g1.ivfdata").is_file() and (index / "vectors.g1.npy").is_file()
    command = ["index", "--checkpoint", str(checkpoint), "--images", str(base / "first"), "--out", str(index), "--kind", "flat"]
    assert main([*command, "--overwrite"]) == 0
    files = sorted(p.name for p in index.iterdir() if not p.name.startswith("."))
    exported = ["model.onnx", "model.onnx.json"] if Gallery(index).meta["query_model"] else []  # with onnx installed
    assert files == sorted(["index.json", "catalogue.sqlite", "vectors.npy", "faiss.index", *exported]), files
    recorded = json.loads((index / ".metrictransfer.json").read_text())["files"]
    assert sorted(recorded) == files
    assert Gallery(index).count == 150
