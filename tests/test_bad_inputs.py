"""A careless user's inputs, through the command line: each gives one line naming what is wrong and
what to do (exit status 2; 1 for a full disk; 130 for Ctrl-C), never a traceback, and nothing in a finished run changes.

Each case builds its own broken input from a copy of one small finished run, runs ``metrictransfer``
in this process and compares every file of the run folder before and after.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml

from metrictransfer.cli import main
from metrictransfer.config import build_config
from metrictransfer.engine import trainer
from metrictransfer.engine.run_folder import RunLock
from tests.helpers import TINY, snapshot

pytestmark = pytest.mark.slow  # every test here trains a model (or uses a run trained for the module)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run (with kept checkpoints) and its recipe; every case works on a copy."""
    root = tmp_path_factory.mktemp("finished")
    trainer.train(build_config(TINY), root / "run", progress=False)
    (root / "recipe.yaml").write_text(yaml.safe_dump(TINY))
    return root


@pytest.fixture()
def work(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    return tmp_path


def _npy(w: Path) -> list[str]:
    np.save(w / "x.npy", np.zeros((4, 3), dtype=np.float32))
    return ["evaluate", "--embeddings", str(w / "x.npy")]


def _damage_weights_file(w: Path) -> list[str]:
    (w / "weights.pt").write_bytes(b"not a state dict")
    return ["train", str(w / "recipe.yaml"), "--out", str(w / "new"), "--set", f"model.weights={w / 'weights.pt'}"]


def _list_weights_file(w: Path) -> list[str]:
    torch.save([torch.zeros(3)], w / "weights.pt")
    return ["train", str(w / "recipe.yaml"), "--out", str(w / "new"), "--set", f"model.weights={w / 'weights.pt'}"]


def _flip_a_weight(w: Path) -> list[str]:
    flip_bytes_of_a_weight(w / "run" / "checkpoint.pt")
    return ["evaluate", "--checkpoint", str(w / "run")]


def _out_is_a_file(w: Path) -> list[str]:
    (w / "taken").write_text("a file")
    return ["train", str(w / "recipe.yaml"), "--out", str(w / "taken")]


def _unfinished(w: Path) -> list[str]:
    (w / "run" / "results.json").unlink()
    return ["train", str(w / "recipe.yaml"), "--out", str(w / "run")]


def _ensemble_in_another_order(w: Path) -> list[str]:
    embeddings, labels = np.eye(4, dtype=np.float32), np.array([0, 0, 1, 1])
    np.savez(w / "a.npz", embeddings=embeddings, labels=labels, paths=np.array(["a.jpg", "b.jpg", "c.jpg", "d.jpg"]))
    np.savez(w / "b.npz", embeddings=embeddings, labels=labels, paths=np.array(["b.jpg", "a.jpg", "c.jpg", "d.jpg"]))
    return ["evaluate", "--embeddings", str(w / "a.npz"), str(w / "b.npz")]


def _recipe_of_a_list(w: Path) -> list[str]:
    (w / "list.yaml").write_text("- optim\n- lr\n")
    return ["train", str(w / "list.yaml"), "--out", str(w / "new")]


# (id, build the broken input → argv, one-line message pattern, exit status)
def _big_batch(w: Path, *settings: str) -> list[str]:
    return ["train", str(w / "recipe.yaml"), "--out", str(w / "new"), "--set", "data.classes_per_batch=500"] + [
        arg for setting in settings for arg in ("--set", setting)
    ]


BIG_BATCH = (
    r"a batch of 1000 images \(data\.classes_per_batch=500 × data\.images_per_class=2; drawn without labels\) does not fit "
    r"the training split's \d+ images; the largest batch that fits: data\.classes_per_batch=\d+ with data\.images_per_class=2"
)

CASES: list[tuple[str, Callable[[Path], list[str]], str, int]] = [
    (
        "train into a finished run",
        lambda w: ["train", str(w / "recipe.yaml"), "--out", str(w / "run")],
        r"run already holds a finished run; choose another --out, or add --overwrite",
        2,
    ),
    (
        "train into an unfinished run",
        _unfinished,
        r"run already holds an unfinished run; continue it with `metrictransfer train --resume .*run`",
        2,
    ),
    (
        "recipe and --resume together",
        lambda w: ["train", str(w / "recipe.yaml"), "--resume", str(w / "run")],
        r"give either a recipe \(a new run\) or --resume .*, not both",
        2,
    ),
    (
        "--resume with another --out",
        lambda w: ["train", "--resume", str(w / "run"), "--out", str(w / "elsewhere")],
        r"--resume .*run continues that run in its own folder; --out .*elsewhere names another",
        2,
    ),
    (
        "--resume with --overwrite",
        lambda w: ["train", "--resume", str(w / "run"), "--overwrite"],
        r"--overwrite .* cannot be combined with --resume",
        2,
    ),
    (
        "--resume of a folder without a run",
        lambda w: ["train", "--resume", str(w / "nothing")],
        r"cannot resume .*nothing: it does not exist",
        2,
    ),
    (
        "--resume with a changed setting",
        lambda w: ["train", "--resume", str(w / "run"), "--set", "optim.lr=0.5"],
        r"cannot resume .*run: the configuration differs .*optim\.lr: 0\.001 → 0\.5",
        2,
    ),
    ("--out is a file", _out_is_a_file, r"taken is a file, not a folder", 2),
    ("missing recipe", lambda w: ["train", str(w / "nope.yaml")], r"recipe not found: .*nope\.yaml", 2),
    (
        "malformed YAML in --set",
        lambda w: ["train", str(w / "recipe.yaml"), "--out", str(w / "new"), "--set", "optim.lr=[1"],
        r"override 'optim\.lr=\[1': the value is not valid YAML \(.*line 1, column 3\)",
        2,
    ),
    (
        "non-numeric loss parameter",
        lambda w: ["train", str(w / "recipe.yaml"), "--out", str(w / "new"), "--set", "metric_loss.params.margin=wide"],
        r"metric_loss\.params\.margin expects a number, got 'wide'",
        2,
    ),
    (
        "numeric text as a loss parameter",
        lambda w: ["train", str(w / "recipe.yaml"), "--out", str(w / "new"), "--set", "metric_loss.params.margin=1e-1"],
        r"expects a number, got '1e-1' \(YAML reads 1e-3 as text: write 1\.0e-3\)",
        2,
    ),
    (
        "unknown miner parameter",
        lambda w: [
            "train",
            str(w / "recipe.yaml"),
            "--out",
            str(w / "new"),
            "--set",
            "metric_loss.miner=distance_weighted",
            "--set",
            "metric_loss.miner_params.cutof=0.5",
        ],
        r"miner 'distance_weighted': unexpected keyword argument 'cutof' .*its parameters: cutoff, nonzero_loss_cutoff",
        2,
    ),
    (
        "loss parameter metrictransfer sets",
        lambda w: ["train", str(w / "recipe.yaml"), "--out", str(w / "new"), "--set", "metric_loss.params.num_classes=7"],
        r"metric_loss\.params\.num_classes is set by metrictransfer",
        2,
    ),
    (
        "backbone weights that are not a state dict",
        _damage_weights_file,
        r"cannot read backbone weights .*weights\.pt: not a state dict",
        2,
    ),
    ("backbone weights holding a list", _list_weights_file, r"backbone weights .*weights\.pt hold a list, not a state dict of tensors", 2),
    (
        "unknown backbone",
        lambda w: ["train", str(w / "recipe.yaml"), "--out", str(w / "new"), "--set", "model.backbone=resnet19"],
        r"unknown timm backbone 'resnet19'",
        2,
    ),
    (
        "unknown weights of a backbone",
        lambda w: ["train", str(w / "recipe.yaml"), "--out", str(w / "new"), "--set", "model.backbone=resnet10t.tv_in1k"],
        r"timm has no weights 'tv_in1k' for 'resnet10t'; its weights: ",
        2,
    ),
    ("flipped bytes in a weight", _flip_a_weight, r"checkpoint\.pt: its content fails its checksum", 2),
    ("evaluate an .npy", _npy, r"x\.npy holds a single array .*not an \.npz of named arrays", 2),
    (
        "ensemble of files in another order",
        _ensemble_in_another_order,
        r"b\.npz differs from .*a\.npz: the same items in a different order: row 0 is 'b\.jpg' where 'a\.jpg'",
        2,
    ),
    ("recipe that is a list", _recipe_of_a_list, r"list\.yaml must hold a mapping of configuration keys, got list", 2),
    (
        "dataset root that does not exist",
        lambda w: [
            "train",
            str(w / "recipe.yaml"),
            "--out",
            str(w / "new"),
            "--set",
            "data.dataset=cub",
            "--set",
            f"data.root={w / 'nope'}",
        ],
        r"cub: root .*nope does not exist",
        2,
    ),
    (
        "transfer from a source run that does not exist",
        lambda w: [
            "train",
            str(w / "recipe.yaml"),
            "--out",
            str(w / "new"),
            "--set",
            "method=transfer",
            "--set",
            f"transfer.source_checkpoint={w / 'nothing'}",
        ],
        r"no checkpoint at .*nothing",
        2,
    ),
    (
        "a label-free transfer batch larger than the training split (the issue's: named no key)",
        lambda w: _big_batch(w, "method=transfer", f"transfer.source_checkpoint={w / 'run'}"),
        BIG_BATCH,
        2,
    ),
    ("a self-supervised batch larger than the training split", lambda w: _big_batch(w, "method=selfsup"), BIG_BATCH, 2),
    (
        "a class the dataset does not have",
        lambda w: [
            "train",
            str(w / "recipe.yaml"),
            "--out",
            str(w / "new"),
            "--set",
            "data.dataset=folder",
            "--set",
            f"data.root={Path(__file__).resolve().parent.parent / 'examples' / 'gallery'}",
            "--set",
            "data.num_classes=null",
            "--set",
            "data.train_classes=[Z]",
        ],
        r"train_classes names unknown class\(es\) 'Z'; known classes: 0, 6, 7, C",
        2,
    ),
    (
        "a type error in the recipe",
        lambda w: ["train", str(w / "recipe.yaml"), "--out", str(w / "new"), "--set", "data.classes_per_batch=many"],
        r"data\.classes_per_batch: Input should be a valid integer.*\(got 'many'\)",
        2,
    ),
    (
        "search with --k 0",
        lambda w: ["search", "--index", str(w / "index"), str(w / "q.png"), "--k", "0"],
        r"argument --k: must be at least 1, got 0",
        2,
    ),
    ("evaluate a missing checkpoint", lambda w: ["evaluate", "--checkpoint", str(w / "nothing")], r"no checkpoint at .*nothing", 2),
    (
        "embed an unknown split",
        lambda w: ["embed", "--checkpoint", str(w / "run"), "--split", "validation", "--out", str(w / "e.npz")],
        r"unknown split 'validation'",
        2,
    ),
    (
        "report of an unfinished run",
        lambda w: _unfinished(w) and ["report", str(w / "run")],
        r"has no results\.json: the run has not finished",
        2,
    ),
    (
        "table of a folder without results",
        lambda w: _unfinished(w) and ["table", str(w)],
        r"has no results\.json and holds no run folders",
        2,
    ),
    (
        "export a missing checkpoint",
        lambda w: ["export", "--checkpoint", str(w / "nothing"), "--format", "safetensors", "--out", str(w / "m.st")],
        r"no checkpoint at .*nothing",
        2,
    ),
]
if not torch.cuda.is_available():
    CASES.append(
        (
            "device cuda without a GPU",
            lambda w: ["train", str(w / "recipe.yaml"), "--out", str(w / "new"), "--set", "device=cuda"],
            r"device 'cuda' was asked for but CUDA is not available",
            2,
        )
    )


@pytest.mark.parametrize("build, message, status", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_line_and_changes_nothing(work, capsys, build, message, status):
    argv = build(work)
    before = snapshot(work / "run")
    try:
        assert main(argv) == status
    except SystemExit as exit:  # argparse's usage errors
        assert exit.code == status
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and re.match(r"metrictransfer( [a-z]+)?: ", lines[0]), err
    assert re.search(message, lines[0]), lines[0]
    after = snapshot(work / "run")
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not changed, f"the finished run changed: {sorted(changed)}"
    assert not (work / "new").exists(), "a failed start left a run folder behind"


def flip_bytes_of_a_weight(checkpoint: Path) -> None:
    """Change one byte in the middle of the head's weight tensor, where torch's zip container stores it
    uncompressed (a disk error or a bad copy)."""
    state = torch.load(checkpoint, weights_only=True)
    weight = state["models"][state["output"]]["head.weight"]
    data = bytearray(checkpoint.read_bytes())
    at = bytes(data).find(weight.numpy().tobytes())
    assert at > 0
    data[at + weight.numel() * 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))


def test_flipped_bytes_are_caught_by_the_checksum_not_loaded_as_weights(work):
    from metrictransfer.errors import DamagedCheckpointError
    from metrictransfer.runtime.checkpoint import load_checkpoint

    flip_bytes_of_a_weight(work / "run" / "checkpoint.pt")
    with pytest.raises(DamagedCheckpointError, match="fails its checksum"):
        load_checkpoint(work / "run")


def test_a_damaged_newest_checkpoint_falls_back_and_is_repaired(work, capsys):
    run = work / "run"
    (run / "checkpoint.pt").write_bytes(b"")  # truncated
    flip_bytes_of_a_weight(run / "checkpoints" / "step-000000022.pt")  # in a training run, the same bytes
    assert main(["evaluate", "--checkpoint", str(run)]) == 2
    assert "it is empty (0 bytes); `metrictransfer train --resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert re.search(r"warning: resuming from .*step-000000020\.pt \(copied to .*checkpoint\.pt\)", err), err
    assert main(["evaluate", "--checkpoint", str(run), "--json"]) == 0  # the folder works again
    assert json.loads(capsys.readouterr().out)["recall@1"] >= 0


def test_stale_temporaries_of_a_killed_writer_are_removed_at_the_next_start(work):
    run = work / "run"
    stale = [
        run / ".checkpoint.pt.k2j4x9aq.partial",
        run / ".checkpoint.pt.abcd1234",
        run / "checkpoints" / ".step-000000022.pt.zz9y8x7w.partial",
    ]
    for path in stale:
        path.write_bytes(b"x" * 1000)
    keep = run / "notes.txt"
    keep.write_text("mine")
    assert main(["train", "--resume", str(run)]) == 0
    assert not any(p.exists() for p in stale)
    assert keep.read_text() == "mine"


def test_overwrite_replaces_only_the_runs_own_files(work, capsys):
    run = work / "run"
    (run / "notes.txt").write_text("mine")
    old = snapshot(run)
    assert main(["train", str(work / "recipe.yaml"), "--out", str(run), "--overwrite", "--set", "seed=1"]) == 0
    assert (run / "notes.txt").read_text() == "mine"
    assert snapshot(run)["checkpoint.pt"] != old["checkpoint.pt"]
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == sorted(p.name for p in (work / "run" / "checkpoints").iterdir())


def test_a_locked_run_folder_is_refused_naming_the_holder(work, capsys):
    import os
    import socket

    with RunLock(work / "busy"):
        assert main(["train", str(work / "recipe.yaml"), "--out", str(work / "busy")]) == 2
    err = capsys.readouterr().err
    assert f"busy is in use by another training (PID {os.getpid()} on host {socket.gethostname()}" in err
    assert not (work / "busy" / "config.yaml").exists()


def test_two_trainings_into_one_folder_at_once_one_refuses(work):
    import subprocess
    import sys

    command = [sys.executable, "-m", "metrictransfer.cli", "train", str(work / "recipe.yaml"), "--out", str(work / "both")]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = sorted((p.wait(timeout=600), p.stderr.read()) for p in processes)
    assert [status for status, _ in outcomes] == [0, 2], outcomes
    refused = outcomes[1][1]
    assert re.search(r"both (is in use by another training \(PID \d+|already holds)", refused), refused
    config = yaml.safe_load((work / "both" / "config.yaml").read_text())
    assert config["name"] == "tiny" and json.loads((work / "both" / "results.json").read_text())["name"] == "tiny"


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _read_only(*args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system")


@pytest.mark.parametrize(
    "failure, words, status",
    [(_no_space, "no space left on the device (the disk is full)", 1), (_read_only, "the file system is read-only", 2)],
)
def test_a_full_or_read_only_disk_is_named(work, capsys, monkeypatch, failure, words, status):
    """A full disk is a fault of the machine (exit status 1), a read-only place one the user chose (2)."""
    monkeypatch.setattr(tempfile, "mkstemp", failure)
    assert main(["train", str(work / "recipe.yaml"), "--out", str(work / "new")]) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and words in err and "new" in err, err


def test_files_of_a_run_follow_the_umask(work):
    import os

    old = os.umask(0o027)
    try:
        assert main(["train", str(work / "recipe.yaml"), "--out", str(work / "new")]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (work / "new").iterdir() if p.is_file() and p.name != ".lock"}
    assert {"checkpoint.pt", "results.json", "report.md", "config.yaml", "log.csv"} <= modes.keys()
    assert set(modes.values()) == {0o640}, modes


def test_ctrl_c_during_start_up_exits_130_without_a_traceback(work, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "build_dataset", interrupted)
    assert main(["train", str(work / "recipe.yaml"), "--out", str(work / "new")]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted" in err


def test_ctrl_c_during_the_report_keeps_the_finished_run(work, capsys, monkeypatch):
    from metrictransfer import report

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_report", interrupted)
    assert main(["train", str(work / "recipe.yaml"), "--out", str(work / "new")]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"metrictransfer report {work / 'new'}" in err
    assert (work / "new" / "results.json").is_file()


def test_debug_shows_the_traceback(work, capsys, monkeypatch):
    assert main(["train", str(work / "recipe.yaml"), "--out", str(work / "run"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("METRICTRANSFER_DEBUG", "1")
    assert main(["train", str(work / "recipe.yaml"), "--out", str(work / "run")]) == 2
    assert "RunExistsError" in capsys.readouterr().err


def test_help_loads_no_heavy_library_and_names_every_dataset():
    import subprocess
    import sys

    from metrictransfer.registry import DATASETS, METHODS, TRANSFER_LOSSES

    for registry in (DATASETS, METHODS, TRANSFER_LOSSES):  # the names read from source are those registered
        assert registry.declared_names() == registry.names()
    probe = (
        "import sys; from metrictransfer.cli import main\n"
        "try:\n    main(['data', 'inspect', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'timm', 'pytorch_metric_learning') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr
    assert all(name in result.stdout for name in DATASETS.names())
