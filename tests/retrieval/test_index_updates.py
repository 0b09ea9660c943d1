"""Index kinds from the CLI, updates in place (add, remove, a crash half-way), metadata filters and re-ranking."""

import csv
import json
import re
import shutil

import numpy as np
import pytest

from metrictransfer.cli import main
from metrictransfer.errors import ConfigError, RunLockedError
from metrictransfer.retrieval import Gallery, update
from metrictransfer.retrieval import gallery as gallery_module
from metrictransfer.retrieval.catalogue import Catalogue
from metrictransfer.retrieval.gallery import exact_knn, for_metric
from tests.helpers import COLOURS, coloured_gallery, make_checkpoint

pytest.importorskip("faiss")


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "parity", "number"])
        writer.writerows(rows)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """90 images (30 per colour) listed in a CSV with metadata; the last 5 of each colour in another CSV, to add."""
    base = tmp_path_factory.mktemp("updates")
    root = coloured_gallery(base / "images", images=30)
    rows = [(f"{c}/{i}.png", c, "even" if i % 2 == 0 else "odd", str(i)) for c in COLOURS for i in range(30)]
    _write_csv(root / "first.csv", [r for r in rows if int(r[3]) < 25])
    _write_csv(root / "more.csv", [r for r in rows if int(r[3]) >= 25])
    checkpoint = make_checkpoint(base / "model.pt")
    indexes = {}
    for kind in ("flat", "ivf", "hnsw"):
        out = base / f"index-{kind}"
        assert main(["index", "--checkpoint", str(checkpoint), "--images", str(root / "first.csv"), "--out", str(out), "--kind", kind]) == 0
        indexes[kind] = out
    return root, checkpoint, indexes


def _fails(capsys, args, message):
    """The CLI refuses with one line matching ``message`` (exit status 1, nothing on stdout)."""
    capsys.readouterr()
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and len(err.splitlines()) == 1, err


def _copy(setup, tmp_path, kind="flat"):
    return shutil.copytree(setup[2][kind], tmp_path / "index")


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_each_kind_records_itself_and_answers_like_exact_search(setup, kind):
    root, _, indexes = setup
    meta = json.loads((indexes[kind] / "index.json").read_text())
    assert meta["faiss"]["kind"] == kind and meta["count"] == 75 and meta["generation"] == 0
    if kind == "flat":
        assert meta["faiss"]["measured"] == {"exact": True}
    else:  # measured against exact search, on held-out gallery queries
        assert meta["faiss"]["measured"]["queries"] == 75 and 0.95 <= meta["faiss"]["measured"]["recall_at_10"] <= 1
    g = Gallery(indexes[kind])
    vectors = g.vectors[:5]
    found = g.search_vectors(vectors, 10)
    d, rows = exact_knn(for_metric(vectors, g.metric), for_metric(g.vectors, g.metric), 10, g.metric)
    for row, exact_d in zip(found, d):
        assert [n.distance for n in row] == pytest.approx(list(exact_d), abs=1e-4)


def test_an_item_keeps_its_id_and_metadata_through_adds_and_removes(setup, tmp_path, capsys):
    root, _, _ = setup
    index = _copy(setup, tmp_path)
    before = Gallery(index)
    red3 = before.item(3)
    assert red3.path.endswith("red/3.png") and red3.metadata == {"parity": "odd", "number": "3"} and red3.label == "red"
    assert main(["index", "--index", str(index), "--add", str(root / "more.csv")]) == 0
    assert main(["index", "--index", str(index), "--remove", "0,1,2"]) == 0
    after = Gallery(index)
    assert after.generation == 2 and after.count == 87
    assert after.item(3) == red3  # same id, same item
    assert list(after.ids[-15:]) == list(range(75, 90))  # new items after every earlier id
    with pytest.raises(ConfigError, match="item id 0 is not in this index"):
        after.item(0)
    # the previous generations' files are gone; only this one's remain
    assert sorted(p.name for p in index.glob("vectors*")) == ["vectors.g2.npy"]
    assert sorted(p.name for p in index.glob("faiss*")) == ["faiss.g2.index"]
    # an added image finds itself, with its metadata
    [row] = after.search([root / "blue" / "27.png"], 1)
    assert row[0].path.endswith("blue/27.png") and row[0].distance == pytest.approx(0, abs=1e-3)
    assert row[0].metadata == {"parity": "odd", "number": "27"} and row[0].id >= 75


def test_remove_by_path_csv_and_unknown_ids_change_nothing(setup, tmp_path, capsys):
    root, _, _ = setup
    index = _copy(setup, tmp_path)
    listing = tmp_path / "gone.csv"
    listing.write_text("path\n" + str(root / "green" / "4.png") + "\n")
    assert main(["index", "--index", str(index), "--remove", str(listing)]) == 0
    g = Gallery(index)
    assert g.count == 74 and not g.catalogue.ids_of_paths([str(root / "green" / "4.png")], g.generation)
    _fails(capsys, ["index", "--index", str(index), "--remove", "3,999"], "not in this index.*999")
    assert Gallery(index).count == 74 and Gallery(index).generation == 1


def test_adding_an_image_already_indexed_is_refused(setup, tmp_path, capsys):
    root, _, _ = setup
    index = _copy(setup, tmp_path)
    _fails(capsys, ["index", "--index", str(index), "--add", str(root / "first.csv")], "in the index already")


def test_hnsw_refuses_removal_but_takes_additions(setup, tmp_path, capsys):
    root, _, _ = setup
    index = _copy(setup, tmp_path, "hnsw")
    _fails(capsys, ["index", "--index", str(index), "--remove", "3"], "hnsw index, from which faiss cannot remove")
    assert main(["index", "--index", str(index), "--add", str(root / "more.csv")]) == 0
    assert Gallery(index).count == 90


def test_a_crash_before_the_switch_leaves_the_previous_index_answering(setup, tmp_path, monkeypatch):
    root, _, _ = setup
    index = _copy(setup, tmp_path, "ivf")
    query = [root / "red" / "26.png"]

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed just before index.json names the new generation

    monkeypatch.setattr(update, "atomic_write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        update.update_index(index, add=root / "more.csv", remove="5")
    # the new generation's rows are committed and its files written, yet the index is the one before
    g = Gallery(index)
    assert g.generation == 0 and g.count == 75 and g.item(5).id == 5
    assert not g.search(query, 1)[0][0].path.endswith("red/26.png")
    monkeypatch.undo()
    update.update_index(index, add=root / "more.csv")  # the crashed update's leftovers are discarded first
    g = Gallery(index)
    assert g.generation == 1 and g.count == 90 and g.item(5).id == 5
    assert g.search(query, 1)[0][0].path.endswith("red/26.png")
    assert sorted(p.name for p in index.glob("faiss*")) == ["faiss.g1.index"]


def test_an_update_waits_for_no_one_while_another_holds_the_index(setup, tmp_path):
    root, _, _ = setup
    index = _copy(setup, tmp_path)
    held = gallery_module.IndexLock(index).acquire()
    try:
        with pytest.raises(RunLockedError):
            update.update_index(index, remove="3")
    finally:
        held.release()


@pytest.mark.parametrize("through_index", [False, True])
def test_where_never_returns_fewer_than_k_passing_items(setup, monkeypatch, through_index):
    _, _, indexes = setup
    g = Gallery(indexes["ivf"])
    if through_index:  # faiss's id selector, as for many passing items
        monkeypatch.setattr(gallery_module, "EXACT_FILTERED_BELOW", 0)
    red = g.vectors[:1]
    found = g.search_vectors(red, 10, where="parity = even and number >= 10")
    assert len(found[0]) == 10  # 3 colours × 8 even numbers in 10..24 pass; red's alone are 8
    assert all(n.metadata["parity"] == "even" and int(n.metadata["number"]) >= 10 for n in found[0])
    assert [n.distance for n in found[0]] == sorted(n.distance for n in found[0])
    # the same answer as exact search among the passing items
    passing = [i for i in g.ids if (m := g.item(int(i)).metadata)["parity"] == "even" and int(m["number"]) >= 10]
    rows = np.searchsorted(g.ids, passing)
    d, _ = exact_knn(for_metric(red, g.metric), for_metric(g.vectors[rows], g.metric), 10, g.metric)
    assert [n.distance for n in found[0]] == pytest.approx(list(d[0]), abs=1e-4)


def test_where_is_parsed_not_pasted_into_sql(setup):
    _, _, indexes = setup
    g = Gallery(indexes["flat"])
    vector = g.vectors[:1]
    with pytest.raises(ConfigError, match="no column 'colour'.*parity, number"):
        g.search_vectors(vector, 3, where="colour = red")
    with pytest.raises(ConfigError, match='expected conditions like "column = value"'):
        g.search_vectors(vector, 3, where="parity = odd; DROP TABLE items")
    assert g.search_vectors(vector, 3, where='parity = "odd\' OR 1=1 --"') == [[]]  # a value, matching nothing
    assert len(Gallery(indexes["flat"]).search_vectors(vector, 3)[0]) == 3  # the table is still there


def test_refine_reranks_candidates_by_exact_distance(setup):
    _, _, indexes = setup
    g = Gallery(indexes["ivf"])
    vectors = g.vectors[10:13]
    refined = g.search_vectors(vectors, 5, effort=1, refine=40)
    d, _ = exact_knn(for_metric(vectors, g.metric), for_metric(g.vectors, g.metric), 5, g.metric)
    for row, exact_d in zip(refined, d):
        assert [n.distance for n in row] == pytest.approx(list(exact_d), abs=1e-4)
    with pytest.raises(ConfigError, match="re-rank at least k"):
        g.search_vectors(vectors, 5, refine=3)


def test_search_options_that_do_not_apply_are_refused(setup, capsys):
    root, _, indexes = setup
    query = str(root / "red" / "0.png")
    _fails(capsys, ["search", query, "--index", str(indexes["flat"]), "--nprobe", "4"], "searches exactly")
    _fails(capsys, ["search", query, "--index", str(indexes["hnsw"]), "--nprobe", "4"], "its search effort is ef")
    assert main(["search", query, "--index", str(indexes["hnsw"]), "--ef", "64", "--json", "--where", "number < 3"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    assert {n["metadata"]["number"] for n in result["neighbours"]} <= {"0", "1", "2"} and len(result["neighbours"]) == 9


def test_bad_index_requests_name_what_to_do(setup, tmp_path, capsys):
    root, checkpoint, indexes = setup
    _fails(
        capsys,
        ["index", "--checkpoint", str(checkpoint), "--images", str(root), "--out", str(tmp_path / "pq"), "--kind", "ivfpq"],
        "at least 1000 items",
    )
    assert not (tmp_path / "pq").exists()
    _fails(
        capsys, ["index", "--index", str(indexes["flat"]), "--add", str(root), "--out", str(tmp_path / "x")], "--index DIR --add/--remove"
    )
    with pytest.raises(ConfigError, match="nothing to change"):
        update.update_index(indexes["flat"])
    with pytest.raises(SystemExit):
        main(["index", "--checkpoint", str(checkpoint), "--images", str(root), "--out", str(tmp_path / "m"), "--memory", "lots"])


def test_metadata_columns_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="'id'"):
        Catalogue(tmp_path / "c.sqlite", create_columns=["id"])
    with pytest.raises(ConfigError, match="'a b'"):
        Catalogue(tmp_path / "d.sqlite", create_columns=["a b"])


def test_the_python_api_builds_updates_and_filters(setup, tmp_path):
    import metrictransfer

    root, checkpoint, _ = setup
    meta = metrictransfer.index(checkpoint, root / "first.csv", tmp_path / "index", kind="ivf", memory=1 << 30)
    assert meta["faiss"]["kind"] == "ivf" and meta["catalogue"]["columns"] == ["parity", "number"]
    meta = metrictransfer.update_index(tmp_path / "index", add=root / "more.csv", remove="0")
    assert meta["count"] == 89 and meta["generation"] == 1
    [found] = metrictransfer.search(tmp_path / "index", [root / "green" / "28.png"], k=4, where="number >= 26", refine=20)
    assert found[0].path.endswith("green/28.png") and all(int(n.metadata["number"]) >= 26 for n in found)


def test_where_reads_labels_by_class_name(setup):
    _, _, indexes = setup
    g = Gallery(indexes["flat"])
    [found] = g.search_vectors(g.vectors[:1], 30, where="label = blue and number < 5")
    assert len(found) == 5 and {n.label for n in found} == {"blue"}


def test_adding_with_another_model_than_the_one_that_built_the_index_is_refused(setup, tmp_path, capsys):
    root, _, _ = setup
    index = _copy(setup, tmp_path)
    meta = json.loads((index / "index.json").read_text())
    meta["checkpoint"] = str(make_checkpoint(tmp_path / "other.pt", seed=1))  # the run's weights changed since
    (index / "index.json").write_text(json.dumps(meta))
    _fails(capsys, ["index", "--index", str(index), "--add", str(root / "more.csv")], "built by a different model")
    assert Gallery(index).count == 75 and Gallery(index).generation == 0
