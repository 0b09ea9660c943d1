"""``metrictransfer evaluate --embeddings``: one JSON object, a readable table, and errors that name the problem."""

import json

import numpy as np
import pytest
import torch

from metrictransfer.cli import main
from metrictransfer.evaluation import retrieval_metrics
from metrictransfer.evaluation.embeddings_file import EmbeddingsFile, load_embeddings, save_embeddings


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 8, n)
    embeddings = (rng.standard_normal((8, 5))[labels] + 0.8 * rng.standard_normal((n, 5))).astype(np.float32)
    return embeddings, labels


def _run(capsys, *args):
    capsys.readouterr()
    code = main(["evaluate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_has_exactly_the_documented_keys(tmp_path, capsys):
    embeddings, labels = _data()
    np.savez(tmp_path / "e.npz", embeddings=embeddings, labels=labels)
    code, out, _ = _run(capsys, "--embeddings", str(tmp_path / "e.npz"), "--k", "1,10", "--metric", "cosine", "--json")
    assert code == 0
    metrics = json.loads(out)
    assert list(metrics) == ["recall@1", "recall@10", "map@r", "r_precision"]
    expected = retrieval_metrics(torch.from_numpy(embeddings), torch.from_numpy(labels), [1, 10], "cosine")
    assert metrics == pytest.approx(expected, abs=1e-12)
    code, out, _ = _run(capsys, "--embeddings", str(tmp_path / "e.npz"), "--k", "1", "--nmi", "--json")
    assert set(json.loads(out)) == {"recall@1", "map@r", "r_precision", "nmi"}


def test_query_gallery_and_table(tmp_path, capsys):
    embeddings, labels = _data(seed=1)
    is_query = np.arange(len(labels)) % 4 == 0
    save_embeddings(tmp_path / "qg.npz", EmbeddingsFile(embeddings, labels, is_query=is_query, is_gallery=~is_query))
    code, out, _ = _run(capsys, "--embeddings", str(tmp_path / "qg.npz"), "--query-gallery", "--k", "1,5", "--json")
    assert code == 0
    expected = retrieval_metrics(
        torch.from_numpy(embeddings),
        torch.from_numpy(labels),
        [1, 5],
        is_query=torch.from_numpy(is_query),
        is_gallery=torch.from_numpy(~is_query),
    )
    assert json.loads(out) == pytest.approx(expected, abs=1e-12)
    code, out, _ = _run(capsys, "--embeddings", str(tmp_path / "qg.npz"), "--query-gallery")
    assert code == 0 and "query vs gallery" in out and "map@r" in out and "recall@8" in out


def test_the_printout_is_in_percent_and_the_json_in_fractions(tmp_path, capsys):
    # Bug caught: evaluate printed fractions (0.8731) where reports and table print percent (87.3).
    embeddings, labels = _data()
    np.savez(tmp_path / "e.npz", embeddings=embeddings, labels=labels)
    _, out, _ = _run(capsys, "--embeddings", str(tmp_path / "e.npz"), "--k", "1,2", "--json")
    fractions = json.loads(out)
    assert all(0 <= v <= 1 for v in fractions.values())
    code, out, _ = _run(capsys, "--embeddings", str(tmp_path / "e.npz"), "--k", "1,2")
    assert code == 0
    assert out.splitlines()[1:] == [f"  {k:<11}  {f'{100 * v:.1f}%':>6}" for k, v in fractions.items()]


def test_file_round_trip_keeps_every_array(tmp_path):
    embeddings, labels = _data(n=10)
    data = EmbeddingsFile(embeddings, labels, paths=np.array([f"img/{i}.jpg" for i in range(10)]), metric="cosine")
    save_embeddings(tmp_path / "r.npz", data)
    back = load_embeddings(tmp_path / "r.npz")
    np.testing.assert_array_equal(back.embeddings, embeddings)
    np.testing.assert_array_equal(back.labels, labels)
    assert back.paths.tolist() == data.paths.tolist() and back.metric == "cosine"
    assert not list(tmp_path.glob(".r.npz*")), "no temporary file may be left behind"


@pytest.mark.parametrize(
    "arrays, extra, message",
    [
        ({"embeddings": np.zeros((3, 2), np.float32)}, [], "has no 'labels' array"),
        (
            {"embeddings": np.zeros((3, 2), np.float32), "labels": np.zeros(3, int)},
            ["--query-gallery"],
            "has no 'is_query', 'is_gallery' array",
        ),
        ({"embeddings": np.zeros((3, 2), np.float32), "labels": np.zeros(2, int)}, [], "mismatched lengths: 3 embeddings but 2 labels"),
        ({"embeddings": np.array([[np.nan, 0], [0, 0], [1, np.nan]], np.float32), "labels": np.zeros(3, int)}, [], "2 rows hold NaN"),
        ({"embeddings": np.zeros((1, 2), np.float32), "labels": np.zeros(1, int)}, [], "at least 2 items"),
        ({"embeddings": np.zeros((3, 2), np.float32), "labels": np.zeros(3)}, [], "'labels' must be a 1-D integer array"),
    ],
)
def test_bad_files_get_a_clear_error(tmp_path, capsys, arrays, extra, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    code, _, err = _run(capsys, "--embeddings", str(tmp_path / "bad.npz"), *extra)
    assert code == 2
    assert message in err


def test_missing_or_damaged_file(tmp_path, capsys):
    code, _, err = _run(capsys, "--embeddings", str(tmp_path / "nope.npz"))
    assert code == 2 and "nope.npz does not exist" in err
    (tmp_path / "junk.npz").write_text("not a zip")
    code, _, err = _run(capsys, "--embeddings", str(tmp_path / "junk.npz"))
    assert code == 2 and "junk.npz is not a readable .npz file" in err


def test_several_files_are_evaluated_as_an_ensemble(tmp_path, capsys):
    from metrictransfer.evaluation import ensemble_embeddings

    a, labels = _data(seed=2)
    b = np.random.default_rng(3).standard_normal((len(labels), 3)).astype(np.float32)
    np.savez(tmp_path / "a.npz", embeddings=a, labels=labels)
    np.savez(tmp_path / "b.npz", embeddings=b, labels=labels)
    code, out, _ = _run(capsys, "--embeddings", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--k", "1,2", "--json")
    assert code == 0
    joined = ensemble_embeddings([torch.from_numpy(a), torch.from_numpy(b)])
    assert json.loads(out) == pytest.approx(retrieval_metrics(joined, torch.from_numpy(labels), [1, 2]), abs=1e-12)
    np.savez(tmp_path / "c.npz", embeddings=b, labels=labels[::-1].copy())
    code, _, err = _run(capsys, "--embeddings", str(tmp_path / "a.npz"), str(tmp_path / "c.npz"))
    assert code == 2 and "'labels' differs" in err
