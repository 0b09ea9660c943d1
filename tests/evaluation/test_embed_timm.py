"""``metrictransfer embed --timm``: a timm model's features of a split, written as an .npz or as an embeddings
table (a folder of memory-mapped .npy arrays), read back, checked, used as a transfer's source, and sharded
over two torchrun processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from metrictransfer.cli import main
from metrictransfer.config import SourceModelConfig, build_config
from metrictransfer.data.registry import build_dataset
from metrictransfer.data.transforms import build_transform
from metrictransfer.errors import DataError, MissingFileError
from metrictransfer.evaluation import embed_to_file
from metrictransfer.evaluation.embeddings_file import load_embeddings
from metrictransfer.evaluation.embeddings_table import TableRows, rows_by_index
from metrictransfer.models.pretrained import PretrainedFeatures

DATA = ["--dataset", "glyphs", "--set", "data.num_classes=3", "--split", "train"]
# name, --image-size, --features: a CNN at another size than the 32 px glyphs, and a ViT built for 32 px
MODELS = {"resnet10t": ("resnet10t", 40, "avg_max"), "vit": ("vit_tiny_patch16_224", 32, "pooled")}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one thread is as fast, and steady on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _timm_args(weights: Path, key: str) -> list[str]:
    name, size, features = MODELS[key]
    return ["--timm", name, "--weights", str(weights), "--image-size", str(size), "--features", features]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """A local weights file per model (random, seeded): what --weights FILE loads offline."""
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for key, (name, size, _) in MODELS.items():
        torch.manual_seed(3)
        files[key] = folder / f"{key}.pt"
        torch.save(PretrainedFeatures(name, pretrained=False, image_size=size).model.state_dict(), files[key])
    return files


@pytest.fixture(scope="module")
def embedded(weights, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Each model's embeddings of the glyph training split, as an .npz and as a table."""
    folder = tmp_path_factory.mktemp("embedded")
    out: dict[str, dict[str, Path]] = {}
    for key in MODELS:
        out[key] = {"npz": folder / f"{key}.npz", "table": folder / f"{key}_table"}
        for path in out[key].values():
            assert main(["embed", *_timm_args(weights[key], key), *DATA, "--batch-size", "48", "--out", str(path)]) == 0
    return out


def _direct_forward(key: str, weights: Path) -> tuple[torch.Tensor, list[str]]:
    """The model itself on the training split's test-transformed images, at its own size and normalisation."""
    name, size, features = MODELS[key]
    spec = SourceModelConfig(name=name, image_size=size)
    model = PretrainedFeatures(name, pretrained=False, weights=weights, features=features, image_size=size)
    data = build_config({"data": {"num_classes": 3}}).data
    dataset = build_dataset(data, "train")
    transform = build_transform(data.transform, False, size, spec.normalization)
    with torch.inference_mode():
        images = torch.stack([transform(dataset[i][0]) for i in range(len(dataset))])
        rows = torch.cat([model(images[s : s + 64]) for s in range(0, len(images), 64)])
    return rows, dataset.item_names


@pytest.mark.parametrize("key", sorted(MODELS))
def test_rows_are_the_models_features_of_the_test_view_in_both_formats(key, weights, embedded):
    expected, items = _direct_forward(key, weights[key])
    npz, table = load_embeddings(embedded[key]["npz"]), load_embeddings(embedded[key]["table"], verify=True)
    torch.testing.assert_close(torch.from_numpy(npz.embeddings), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(table.embeddings), npz.embeddings)  # the same numbers in both formats
    for data in (npz, table):
        assert data.items.tolist() == items  # the names transfer.source_embeddings checks against the training set
        assert (data.dataset, data.split, data.metric) == ("glyphs", "train", "euclidean")
        name, size, features = MODELS[key]
        assert {k: data.model[k] for k in ("kind", "name", "features", "image_size", "pretrained")} == {
            "kind": "timm",
            "name": name,
            "features": features,
            "image_size": size,
            "pretrained": False,
        }
        assert data.model["normalization"] == SourceModelConfig(name=name).normalization
    np.testing.assert_array_equal(table.labels, npz.labels)


def test_a_table_is_memory_mapped_and_read_by_index(embedded):
    folder = embedded["resnet10t"]["table"]
    assert sorted(p.name for p in folder.iterdir()) == ["embeddings.npy", "items.npy", "labels.npy", "meta.json"]
    meta = json.loads((folder / "meta.json").read_text())
    assert {k: meta[k] for k in ("version", "count", "dim", "dtype", "dataset", "split", "metric")} == {
        "version": 1,
        "count": 132,
        "dim": 512,  # avg_max of resnet10t: the average plus the maximum of its 512 channels
        "dtype": "float32",
        "dataset": "glyphs",
        "split": "train",
        "metric": "euclidean",
    }
    table = load_embeddings(folder)
    assert isinstance(table.embeddings, np.memmap) and not table.embeddings.flags.writeable
    rows = rows_by_index(table.embeddings)
    assert isinstance(rows, TableRows) and rows.shape == (132, 512)
    indices = torch.tensor([5, 0, 131, 5, 77])
    picked = rows[indices]
    assert picked.dtype == torch.float32 and picked.device == indices.device
    np.testing.assert_array_equal(picked.numpy(), np.asarray(table.embeddings)[indices.numpy()])
    assert isinstance(rows_by_index(load_embeddings(embedded["resnet10t"]["npz"]).embeddings), torch.Tensor)  # an .npz: one tensor


def test_half_precision_table_and_evaluate(weights, embedded, tmp_path, capsys):
    half = tmp_path / "half"
    args = ["embed", *_timm_args(weights["vit"], "vit"), *DATA, "--out", str(half), "--dtype", "float16", "--json"]
    status, out, _ = _run(capsys, *args)
    assert status == 0 and json.loads(out) == {
        "out": str(half),
        "split": "train",
        "items": 132,
        "dim": 192,
        "format": "table",
        "dtype": "float16",
    }
    full = load_embeddings(embedded["vit"]["table"])
    data = load_embeddings(half, verify=True)
    assert data.embeddings.dtype == np.float16
    np.testing.assert_array_equal(np.asarray(data.embeddings), np.asarray(full.embeddings).astype(np.float16))
    assert TableRows(data.embeddings)[torch.tensor([3])].dtype == torch.float32
    assert (half / "embeddings.npy").stat().st_size < 0.6 * (embedded["vit"]["table"] / "embeddings.npy").stat().st_size
    status, out, err = _run(capsys, "evaluate", "--embeddings", str(embedded["vit"]["table"]), "--k", "1,2", "--json")
    assert status == 0 and "Warning" not in err
    status, npz_out, _ = _run(capsys, "evaluate", "--embeddings", str(embedded["vit"]["npz"]), "--k", "1,2", "--json")
    assert json.loads(out) == json.loads(npz_out)


def _copy_table(source: Path, target: Path) -> Path:
    target.mkdir()
    for file in source.iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def test_damaged_tables_are_one_line_errors_naming_the_file(embedded, tmp_path, capsys):
    source = embedded["vit"]["table"]
    wrong_count = _copy_table(source, tmp_path / "count")
    meta = json.loads((wrong_count / "meta.json").read_text())
    (wrong_count / "meta.json").write_text(json.dumps({**meta, "count": 131}))
    with pytest.raises(DataError, match=r"count/embeddings\.npy has shape \(132, 192\) but .*meta\.json says 131 rows"):
        load_embeddings(wrong_count)

    missing = _copy_table(source, tmp_path / "missing")
    (missing / "labels.npy").unlink()
    with pytest.raises(MissingFileError, match=r"missing/labels\.npy is missing"):
        load_embeddings(missing)

    flipped = _copy_table(source, tmp_path / "flipped")
    raw = bytearray((flipped / "embeddings.npy").read_bytes())
    raw[-1] ^= 0xFF  # one byte of the last row: same shape, other numbers
    (flipped / "embeddings.npy").write_bytes(bytes(raw))
    load_embeddings(flipped, verify=False)  # a caller that needs only the shape skips reading every byte
    with pytest.raises(DataError, match=r"flipped/embeddings\.npy fails its checksum"):
        load_embeddings(flipped)  # checked by default

    truncated = _copy_table(source, tmp_path / "truncated")
    with open(truncated / "embeddings.npy", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataError, match=r"truncated/embeddings\.npy is not a readable \.npy array"):
        load_embeddings(truncated)

    (tmp_path / "plain").mkdir()
    for folder, message in [(wrong_count, "says 131 rows"), (missing, "labels.npy is missing"), (tmp_path / "plain", "has no meta.json")]:
        status, _, err = _run(capsys, "evaluate", "--embeddings", str(folder))
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_replacing_a_table_needs_overwrite_and_leaves_no_staging_folder(weights, tmp_path, capsys):
    out = tmp_path / "table"
    args = ["embed", *_timm_args(weights["vit"], "vit"), *DATA, "--out", str(out)]
    assert _run(capsys, *args)[0] == 0
    before = (out / "meta.json").read_text()
    status, _, err = _run(capsys, *args, "--dtype", "float16")
    assert status == 2 and "already holds an embeddings table" in err and "--overwrite" in err
    assert (out / "meta.json").read_text() == before
    assert _run(capsys, *args, "--dtype", "float16", "--overwrite")[0] == 0
    assert json.loads((out / "meta.json").read_text())["dtype"] == "float16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table"]  # no staging or replaced folder left
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    status, _, err = _run(capsys, "embed", *args[1:-1], str(tmp_path / "notes"), "--overwrite")
    assert status == 2 and "not an embeddings table" in err and (tmp_path / "notes" / "keep.txt").is_file()


def test_chunks_and_interruptions(weights, embedded, tmp_path, monkeypatch):
    config = build_config({"data": {"num_classes": 3}})
    name, size, features = MODELS["vit"]
    model = PretrainedFeatures(name, pretrained=False, weights=weights["vit"], features=features, image_size=size)
    preprocess = config.data.model_copy(update={"image_size": size, "normalization": "inception"})

    def write(out: Path) -> embed_to_file.Written:
        return embed_to_file.embed_split_to_file(
            model, config, "train", out, torch.device("cpu"), preprocess=preprocess, batch_size=16, chunk_batches=2
        )

    written = write(tmp_path / "chunked")  # 5 chunks of 32 images
    assert (written.count, written.dim, written.table) == (132, 192, True)
    expected = np.asarray(load_embeddings(embedded["vit"]["table"]).embeddings)
    np.testing.assert_allclose(np.asarray(load_embeddings(tmp_path / "chunked").embeddings), expected, rtol=1e-5, atol=1e-6)

    real, calls = embed_to_file.extract_embeddings, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(embed_to_file, "extract_embeddings", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write(tmp_path / "killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunked"]  # neither a half table nor its staging folder


def test_option_errors_are_one_line(weights, tmp_path, capsys):
    cases = [
        (["--out", str(tmp_path / "x")], "one of the arguments --checkpoint --timm is required"),
        (["--timm", "resnet10t", "--checkpoint", "run", "--out", str(tmp_path / "x")], "not allowed with argument"),
        (["--checkpoint", "run", "--image-size", "64", "--out", str(tmp_path / "x")], "--image-size apply to --timm"),
        (["--timm", "resnet10t", "--no-pretrained", "--out", str(tmp_path / "x")], "give --recipe RECIPE.yaml or --dataset NAME"),
        (["--timm", "resnet10t", "--no-pretrained", *DATA, "--out", str(tmp_path / "x.npz"), "--dtype", "float16"], "--dtype float16"),
        (["--timm", "resnet10t", "--no-pretrained", *DATA, "--image-size", "4", "--out", str(tmp_path / "x")], "--image-size: Input"),
        (["--timm", "no_such_net", "--no-pretrained", *DATA, "--out", str(tmp_path / "x")], "--timm: unknown timm model 'no_such_net'"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        try:
            status = main(["embed", *argv])
        except SystemExit as stop:  # a usage error, answered by argparse
            status = stop.code
        err = capsys.readouterr().err
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "x").exists()


TRANSFER = {
    "method": "transfer",
    "data": {"num_classes": 3, "classes_per_batch": 3, "images_per_class": 4, "views": 2, "image_size": 32},
    "model": {"backbone": "resnet10t", "embedding_dim": 16},
    "optim": {"lr": 1e-3, "epochs": 1},
    "eval": {"recall_at": [1]},
    "threads": 1,
}


@pytest.mark.slow
def test_a_transfer_trains_from_a_table_as_from_the_npz(weights, tmp_path, capsys):
    from metrictransfer.engine import trainer
    from metrictransfer.methods import METHODS
    from metrictransfer.runtime.checkpoint import load_checkpoint

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**TRANSFER, "transfer": {"source_embeddings": "set below"}}))
    timm = _timm_args(weights["vit"], "vit")
    for out in ("source.npz", "source_table"):
        assert _run(capsys, "embed", *timm, "--recipe", str(recipe), "--split", "train", "--out", str(tmp_path / out))[0] == 0
    targets = {}
    for out in ("source.npz", "source_table"):
        config = build_config({**TRANSFER, "transfer": {"source_embeddings": str(tmp_path / out)}})
        trainer.train(config, tmp_path / f"run-{out}", progress=False)
        targets[out] = load_checkpoint(tmp_path / f"run-{out}")["models"]["target"]
        method = METHODS["transfer"](config, 3)
        method.prepare_training_set(build_dataset(config.data, "train"))
        if out == "source_table":
            assert isinstance(method.source_table, TableRows) and "source_table" not in dict(method.named_buffers())
        else:
            assert "source_table" in dict(method.named_buffers())
        targets[out + " rows"] = method.source_table[torch.tensor([0, 7, 7, 100])]
    torch.testing.assert_close(targets["source_table rows"], targets["source.npz rows"], rtol=0, atol=0)
    assert targets["source.npz"].keys() == targets["source_table"].keys()
    for key, value in targets["source.npz"].items():
        torch.testing.assert_close(targets["source_table"][key], value, rtol=0, atol=0, msg=key)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("form", ["table", "npz"])
def test_two_processes_write_what_one_process_writes(form, weights, embedded, tmp_path):
    out = tmp_path / ("two" if form == "table" else "two.npz")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "metrictransfer.cli", "embed"]
        + [*_timm_args(weights["resnet10t"], "resnet10t"), *DATA, "--batch-size", "16", "--out", str(out), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    kind = r" \(float32 table\)" if form == "table" else ""
    assert re.fullmatch(rf".*{out.name}: 132 items of the train split, 512-d embeddings{kind}\n", done.stdout), done.stdout  # printed once
    one, two = load_embeddings(embedded["resnet10t"][form]), load_embeddings(out, verify=True)
    assert two.items.tolist() == one.items.tolist()
    np.testing.assert_array_equal(two.labels, one.labels)
    np.testing.assert_allclose(np.asarray(two.embeddings), np.asarray(one.embeddings), rtol=0, atol=1e-6)
    assert two.model == one.model
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no staging folder left
