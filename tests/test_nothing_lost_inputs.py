"""Damaged inputs read back, settings that fail only after training or measure nothing, inputs that are
not what they claim, and messages that mislead (issue 34): each case runs ``metrictransfer`` in this
process and asserts its exit status, one line on stderr naming the file or setting (no traceback), and
that every file in the working folder is byte-identical afterwards (nothing written, nothing left).

One tiny run and one embeddings table of its test split are made once for the module; every case works
on a copy of them.
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml

from metrictransfer.cli import main
from metrictransfer.config import build_config
from metrictransfer.engine import trainer
from tests.helpers import TINY, snapshot

pytestmark = pytest.mark.slow  # every test here trains a model (or uses a run trained for the module)

# The tiny run's test split: 4 glyph classes of 44 images, so no query has more than 132 other-class items.
TEST_ITEMS, MOST_OTHERS = 176, 132


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A finished run, its recipe and an embeddings table of its test split."""
    root = tmp_path_factory.mktemp("made")
    trainer.train(build_config(TINY), root / "run", progress=False)
    (root / "recipe.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["embed", "--checkpoint", str(root / "run"), "--out", str(root / "table")]) == 0
    return root


@pytest.fixture()
def work(made, tmp_path) -> Path:
    shutil.copytree(made, tmp_path, dirs_exist_ok=True)
    return tmp_path


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("metrictransfer: "), err
    return lines[0]


# ---------------------------------------------------------------------------------- the broken inputs


def _zeros_as_labels(w: Path) -> list[str]:
    labels = np.load(w / "table" / "labels.npy")
    np.save(w / "table" / "labels.npy", np.zeros_like(labels))  # same shape and type: only the checksum sees it
    return ["evaluate", "--embeddings", str(w / "table")]


def _flip_an_embedding_bit(w: Path) -> list[str]:
    path = w / "table" / "embeddings.npy"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    return ["evaluate", "--embeddings", str(w / "table")]


def _a_mask_added(w: Path) -> list[str]:
    count = len(np.load(w / "table" / "labels.npy"))
    np.save(w / "table" / "is_query.npy", np.arange(count) % 2 == 0)
    return ["evaluate", "--embeddings", str(w / "table")]


# The run's manifest, where it records results.json's digest, names an edited file first (its own tests:
# test_nothing_lost.py); without one (a run of an earlier version) the file itself is what is checked.


def _results(content: bytes | str) -> Callable[[Path], None]:
    def damage(w: Path) -> None:
        (w / "run" / ".metrictransfer.json").unlink(missing_ok=True)
        path = w / "run" / "results.json"
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return damage


def _truncated_results(w: Path) -> None:
    path = w / "run" / "results.json"
    _results(path.read_bytes()[:40])(w)


def _results_without_final(w: Path) -> None:
    results = json.loads((w / "run" / "results.json").read_text())
    del results["final"]
    _results(json.dumps(results))(w)


def _recipe_of_bytes(content: bytes) -> Callable[[Path], list[str]]:
    def build(w: Path) -> list[str]:
        (w / "binary.yaml").write_bytes(content)
        return ["train", str(w / "binary.yaml"), "--out", str(w / "new")]

    return build


def _random_checkpoint(w: Path) -> list[str]:
    (w / "random.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    return ["evaluate", "--checkpoint", str(w / "random.pt")]


def _truncated_checkpoint(w: Path) -> list[str]:
    path = w / "run" / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return ["evaluate", "--checkpoint", str(w / "run")]


def _random_backbone_weights(w: Path) -> list[str]:
    (w / "weights.pt").write_bytes(np.random.default_rng(1).integers(0, 256, 5_000, dtype=np.uint8).tobytes())
    return ["train", str(w / "recipe.yaml"), "--out", str(w / "new"), "--set", f"model.weights={w / 'weights.pt'}"]


def _embeddings_of_20_items(w: Path, *extra: str) -> list[str]:
    rng = np.random.default_rng(0)
    np.savez(w / "e.npz", embeddings=rng.normal(size=(20, 4)).astype(np.float32), labels=np.arange(20) % 5)
    return ["evaluate", "--embeddings", str(w / "e.npz"), *extra]


def _six_items(w: Path) -> list[str]:
    np.savez(w / "six.npz", embeddings=np.eye(6, dtype=np.float32), labels=np.arange(6) % 3)  # 3 classes of 2
    return ["evaluate", "--embeddings", str(w / "six.npz")]  # the default K: 1, 2, 4, 8


def _csv_listing(w: Path, rows: list[str], images: tuple[str, ...] = ()) -> Path:
    for name in images:
        (w / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (w / "data" / name).write_bytes(b"not decoded by these cases")
    (w / "data").mkdir(exist_ok=True)
    (w / "data" / "list.csv").write_text("\n".join(rows) + "\n")
    return w / "data" / "list.csv"


def _train_on(listing: Path, w: Path) -> list[str]:
    return ["train", str(w / "recipe.yaml"), "--out", str(w / "new"), "--set", "data.dataset=csv", "--set", f"data.root={listing}"]


def _csv_with_bad_rows(w: Path) -> list[str]:
    rows = [
        "path,label",
        "imgs/a.jpg,1",
        "imgs/b.jpg,",  # 3: empty label
        "../elsewhere/c.jpg,2",  # 4: outside the CSV's folder
        "/etc/hostname,2",  # 5: absolute
        "imgs/./a.jpg,1",  # 6: line 2's image again
        "imgs/d.jpg,3",
        "imgs/e.jpg",  # 8: a short row
        "sub/../imgs/d.jpg,3",  # 9: line 7's image again
    ]
    return _train_on(_csv_listing(w, rows), w)


def _csv_with_missing_images(w: Path) -> list[str]:
    rows = ["path,label", "imgs/a.jpg,1", "imgs/gone.jpg,1", "imgs/c.jpg,2", "imgs/d.jpg,2", "imgs/lost.jpg,3", "imgs/f.jpg,3"]
    listing = _csv_listing(w, rows, ("imgs/a.jpg", "imgs/c.jpg", "imgs/d.jpg", "imgs/f.jpg"))
    return [*_train_on(listing, w), "--set", "data.num_classes=null", "--set", "data.test_fraction=0.34"]


def _csv_not_utf8(w: Path) -> list[str]:
    listing = _csv_listing(w, ["path,label"])
    listing.write_bytes(b"path,label\nimgs/\xe9t\xe9.jpg,1\n")  # Latin-1, not UTF-8
    return _train_on(listing, w)


def _index_csv_with_bad_rows(w: Path) -> list[str]:
    rows = ["path,label", "imgs/a.jpg,x", "imgs/b.jpg,", f"{w / 'data' / 'imgs' / 'a.jpg'},x", "imgs/none.jpg,y"]
    listing = _csv_listing(w, rows, ("imgs/a.jpg", "imgs/b.jpg"))
    return ["index", "--checkpoint", str(w / "run"), "--images", str(listing), "--out", str(w / "new")]


def _recall_at(*values: int, validation: bool = False) -> Callable[[Path], list[str]]:
    def build(w: Path) -> list[str]:
        argv = ["train", str(w / "recipe.yaml"), "--out", str(w / "new"), "--set", f"eval.recall_at={list(values)}"]
        return argv + (["--set", "data.validation.classes=0.5", "--set", "data.classes_per_batch=2"] if validation else [])

    return build


def _then(damage: Callable[[Path], None], argv: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
    def build(w: Path) -> list[str]:
        damage(w)
        return argv(w)

    return build


def _report(w: Path) -> list[str]:
    return ["report", str(w / "run")]


def _table(w: Path) -> list[str]:
    return ["table", str(w)]


# (id, build the input → argv, pattern of the one line, words that must not appear)
CASES: list[tuple[str, Callable[[Path], list[str]], str, tuple[str, ...]]] = [
    ("labels.npy replaced by zeros", _zeros_as_labels, r"table/labels\.npy fails its checksum .*write the table again", ()),
    ("a bit flipped in embeddings.npy", _flip_an_embedding_bit, r"table/embeddings\.npy fails its checksum .*write the table again", ()),
    ("a query mask added to a table", _a_mask_added, r"table/is_query\.npy was not written with the table", ()),
    ("report of a truncated results.json", _then(_truncated_results, _report), r"run/results\.json .*is not valid JSON .*truncated", ()),
    ("table of a truncated results.json", _then(_truncated_results, _table), r"run/results\.json .*is not valid JSON", ()),
    ("report of an empty results.json", _then(_results(""), _report), r"run/results\.json \(a run's results\) is empty", ()),
    ("report of a binary results.json", _then(_results(b"\xff\xfe\x00garbage"), _report), r"run/results\.json is not text", ()),
    ("table of a results.json holding a list", _then(_results("[1, 2]"), _table), r"results\.json .*holds a JSON list, not an object", ()),
    ("report of results.json without 'final'", _then(_results_without_final, _report), r"results\.json: 'final' must map", ()),
    ("a recipe of binary bytes", _recipe_of_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xd8"), r"binary\.yaml is not a text file", ()),
    ("a recipe holding a NUL", _recipe_of_bytes(b"name: a\x00b\n"), r"binary\.yaml is not valid YAML: character #x0000", ()),
    (
        "eval.recall_at beyond the test split",
        _recall_at(1, 100000),
        rf"eval\.recall_at 100000 is more than the test split of glyphs can answer \({TEST_ITEMS} items; .* {MOST_OTHERS} "
        rf".*recall@100000 would be 1\.0 whatever the model; use ranks of at most {MOST_OTHERS}",
        (),
    ),
    (
        "eval.recall_at at the first rank that measures nothing",
        _recall_at(MOST_OTHERS + 1),
        rf"eval\.recall_at {MOST_OTHERS + 1} is more than the test split",
        (),
    ),
    ("eval.recall_at beyond the validation split", _recall_at(1, 100, validation=True), r"eval\.recall_at 100 .*the validation split", ()),
    ("evaluate --k beyond 20 items", lambda w: _embeddings_of_20_items(w, "--k", "1,100"), r"--k 100 is more than .*e\.npz can answer", ()),
    (
        "evaluate --k one past what 20 items answer",
        lambda w: _embeddings_of_20_items(w, "--k", "17"),
        r"--k 17 .*use ranks of at most 16",
        (),
    ),
    ("evaluate with the default K on 6 items", _six_items, r"K \(choose with --k\) 8 is more than .*six\.npz can answer \(6 items", ()),
    (
        "evaluate --checkpoint with the run's ranks on too small data",
        lambda w: ["evaluate", "--checkpoint", str(w / "run"), "--k", "133"],
        r"--k 133 is more than .*glyphs test split can answer",
        (),
    ),
    (
        "random bytes as a checkpoint",
        _random_checkpoint,
        r"random\.pt: it is not a checkpoint metrictransfer wrote: not a PyTorch file",
        ("weights_only", "Python objects"),
    ),
    (
        "a truncated checkpoint",
        _truncated_checkpoint,
        r"checkpoint\.pt: it is not a checkpoint metrictransfer wrote.* damaged",
        ("weights_only",),
    ),
    (
        "random bytes as backbone weights",
        _random_backbone_weights,
        r"cannot read backbone weights .*weights\.pt",
        ("weights_only", "trust"),
    ),
    (
        "a CSV with bad rows",
        _csv_with_bad_rows,
        r"list\.csv: 6 problems in its rows: line 3: empty label; line 4: path '\.\./elsewhere/c\.jpg' leads outside "
        r"the CSV's folder; line 5: path '/etc/hostname' is absolute; line 6: path 'imgs/\./a\.jpg' is listed again "
        r"\(first on line 2\); line 8: expected 2 columns .*; and 1 more; each row lists one image once",
        (),
    ),
    (
        "a CSV listing missing images",
        _csv_with_missing_images,
        r"csv train: 1 of 4 listed images do not exist under .*first: imgs/gone\.jpg \(list\.csv line 3\)",
        (),
    ),
    ("a CSV that is not UTF-8", _csv_not_utf8, r"list\.csv: not UTF-8 text", ()),
    (
        "an index CSV with bad rows",
        _index_csv_with_bad_rows,
        r"list\.csv: 3 problems in its rows: line 3: no label \(every row needs path and label\); line 4: path "
        r"'/\S+/data/imgs/a\.jpg' is listed again \(first on line 2\); line 5: image 'imgs/none\.jpg' does not exist",
        (),
    ),
]


@pytest.mark.parametrize("build, message, unwanted", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_damaged_or_meaningless_input_is_one_line_and_changes_nothing(work, capsys, monkeypatch, build, message, unwanted):
    def no_step(*args, **kwargs):
        raise AssertionError("a training step ran: the setting should have been refused before it")

    monkeypatch.setattr(trainer.Trainer, "step", no_step)
    argv = build(work)
    before = snapshot(work)
    assert main(argv) == 2
    line = one_line(capsys)
    assert re.search(message, line), line
    assert not any(word in line for word in unwanted), line
    after = snapshot(work)
    assert after == before, f"files changed: {sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))}"
    assert not (work / "new").exists(), "a refused start left an output folder behind"


def test_an_intact_table_and_run_still_read(work, capsys):
    # Bug caught: a checksum recorded or compared wrongly, failing every table (or every report).
    assert main(["evaluate", "--embeddings", str(work / "table"), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--checkpoint", str(work / "run"), "--json"]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert table["recall@1"] == pytest.approx(direct["recall@1"])
    meta = json.loads((work / "table" / "meta.json").read_text())
    assert set(meta["sha256"]) == {"embeddings.npy", "labels.npy", "items.npy"}
    assert main(["table", str(work)]) == 0


def test_a_table_of_the_first_version_is_read_with_a_warning(work, capsys):
    # Bug caught: tables written before labels were checksummed refused (or their labels silently trusted).
    meta_path = work / "table" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["sha256"] = {"embeddings.npy": meta["sha256"]["embeddings.npy"]}
    meta_path.write_text(json.dumps(meta))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["evaluate", "--embeddings", str(work / "table")]) == 0
    said = " ".join(str(w.message) for w in caught)
    assert "records the checksum of embeddings.npy only" in said and "labels.npy, items.npy are not checked" in said
    _flip_an_embedding_bit(work)  # the checksum it does record is still checked
    with pytest.warns(UserWarning, match="are not checked"):
        assert main(["evaluate", "--embeddings", str(work / "table")]) == 2
    assert "embeddings.npy fails its checksum" in one_line(capsys)


def test_a_rank_at_which_recall_is_one_by_construction_is_never_reported():
    # Bug caught: retrieval_metrics reporting recall@K = 1.0 where no embedding could score less.
    from metrictransfer.errors import ConfigError
    from metrictransfer.evaluation import retrieval_metrics
    from metrictransfer.evaluation.metrics import compute_query_statistics, most_negatives

    labels = np.array([0, 0, 1, 1, 1, 2])  # class 0 queries have 4 items of other classes, class 1 queries 3
    assert most_negatives(labels) == 4
    worst = torch.tensor([[0.0], [9.0], [1.0], [2.0], [3.0], [4.0]])  # item 0: all 4 others before its match
    assert int(compute_query_statistics(worst, labels).rank.max()) == 4  # so recall@4 can miss: 4 is answerable
    assert retrieval_metrics(worst, labels, [4])["recall@4"] < 1.0
    with pytest.raises(ConfigError, match=r"K 5 is more than these items can answer \(6 items; .* 4 "):
        retrieval_metrics(worst, labels, [1, 5])
    query, gallery = np.array([1, 0, 1, 0, 0, 0], bool), np.array([0, 1, 0, 1, 1, 1], bool)
    assert most_negatives(labels, query, gallery) == 3  # gallery of 4: 3 others for class 0, 2 for class 1
    with pytest.raises(ConfigError, match="every item is of one class"):
        retrieval_metrics(torch.randn(4, 2), np.zeros(4, dtype=np.int64), [1])


def test_a_checkpoint_whose_parts_fail_their_crc_is_named_damaged(tmp_path):
    # Bug caught: a damaged zip reported as "Python objects" (or with torch's advice) instead of damage.
    from metrictransfer.runtime.checkpoint import unloadable_reason

    torch.save({"format": 0, "x": torch.arange(256.0)}, tmp_path / "c.pt")
    raw = bytearray((tmp_path / "c.pt").read_bytes())
    raw[raw.find(torch.arange(256.0).numpy().tobytes()) + 10] ^= 0xFF
    (tmp_path / "c.pt").write_bytes(bytes(raw))
    failure = RuntimeError("Weights only load failed. In PyTorch 2.6 ... weights_only=False ...")
    reason, damaged = unloadable_reason(tmp_path / "c.pt", failure)
    assert damaged and re.search(r"its part \S+/data/0 fails its CRC-32 check", reason) and "weights_only" not in reason
    with zipfile.ZipFile(tmp_path / "c.pt") as archive:
        assert archive.testzip() is not None
