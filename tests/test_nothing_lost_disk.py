"""A full disk, a target that is not a regular file, and what a failed command says: nothing is lost.

A full disk is a small tmpfs mounted for the test where that is allowed (as root in a container), and a
patched write everywhere: writing a checkpoint, an export of each format and an index must each end in
one line, exit status 1, "cannot write PATH: no space left on the device ...; free some space or write
elsewhere", with no temporary left and the previous file byte-identical. An export onto a FIFO, a
socket or a device is refused (exit status 2) and the thing is left as it was; exports follow the umask;
kept checkpoints are independent copies; ``distill`` names a folder to resume from only once it exists.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import metrictransfer.io as mt_io
from metrictransfer.cli import main
from metrictransfer.config import build_config
from metrictransfer.engine import trainer
from metrictransfer.errors import OutputLocationError, StorageFaultError
from metrictransfer.model_export import FORMATS
from metrictransfer.runtime import checkpoint as ckpt
from tests import helpers
from tests.helpers import tiny

pytestmark = pytest.mark.slow  # every test here trains a model (or uses a run trained for the module)

TINY = tiny(checkpoint={"every_steps": 10, "keep": 1})
NO_SPACE = "no space left on the device"
WHAT_TO_DO = "free some space or write elsewhere"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished tiny run (the module's only training to the end), its recipe, a small gallery, and
    a good export of each format written under umask 027."""
    root = tmp_path_factory.mktemp("finished")
    trainer.train(build_config(TINY), root / "run", progress=False)
    (root / "recipe.yaml").write_text(yaml.safe_dump(TINY))
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / "gallery" / f"class{c}").mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "gallery" / f"class{c}" / f"{i}.png")
    old = os.umask(0o027)
    try:
        for fmt in FORMATS:
            assert main(["export", "--checkpoint", str(root / "run"), "--format", fmt, "--out", str(root / f"model.{fmt}")]) == 0
    finally:
        os.umask(old)
    return root


def snapshot(folder: Path) -> dict[str, str]:
    """Every regular file under ``folder`` but locks and the disk's filler."""
    return helpers.snapshot(folder, ignored=(".lock", "filler"))


def partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(mt_io.PARTIAL_SUFFIX)]


def one_line(err: str) -> str:
    """The single line the command printed to stderr, checked to be just that."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("metrictransfer: ") and "Traceback" not in err, err
    return lines[0]


def assert_no_space(err: str, path: Path) -> None:
    line = one_line(err)
    assert line.startswith(f"metrictransfer: error: cannot write {path}: {NO_SPACE}") and line.endswith(WHAT_TO_DO), line


@pytest.fixture()
def small_disk(tmp_path) -> Iterator[Callable[[int], Path]]:
    """A factory of small tmpfs mounts (size in bytes) under ``tmp_path``, unmounted afterwards; skips
    the test where mounting is not allowed (not root, or a container without the capability)."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small tmpfs needs root; the patched-write cases cover a full disk here")
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the patched-write cases cover a full disk")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    """Take every free byte of ``folder``'s file system, the last page included."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    chunk = 1 << 20
    try:
        while chunk:
            try:
                os.write(fd, b"\0" * chunk)
            except OSError as err:
                assert err.errno == errno.ENOSPC
                chunk //= 2
    finally:
        os.close(fd)


@pytest.fixture()
def unchecked(monkeypatch) -> None:
    """No free-space check before a write: the write itself meets the full disk."""
    monkeypatch.setattr(mt_io, "require_space", lambda path, nbytes: None)


# ---------------------------------------------------------------------------------------------------
# Checkpoints


def _spy_on_checkpoints(monkeypatch) -> dict[str, str | None]:
    """Records, before each checkpoint write, the digest of the file it replaces (None: a new file)."""
    seen: dict[str, str | None] = {}
    real = ckpt.save_checkpoint

    def save(state, path):
        path = Path(path)
        seen[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        real(state, path)

    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    return seen


def _train_into(finished: Path, run: Path) -> list[str]:
    return ["train", str(finished / "recipe.yaml"), "--out", str(run)]


def test_a_checkpoint_on_a_disk_that_fills_keeps_the_previous_one(finished, small_disk, unchecked, monkeypatch, capsys):
    """A real full disk in the middle of torch.save: one line naming checkpoint.pt (torch says only
    "unexpected pos"), and the checkpoint of step 10 stays, byte for byte, loadable."""
    size = (finished / "run" / "checkpoint.pt").stat().st_size
    disk = small_disk(int(size * 1.6))  # the first checkpoint fits, the second cannot while the first stays
    seen = _spy_on_checkpoints(monkeypatch)
    run = disk / "run"
    assert main(_train_into(finished, run)) == 1
    assert_no_space(capsys.readouterr().err, run / "checkpoint.pt")
    latest = run / "checkpoint.pt"
    assert hashlib.sha256(latest.read_bytes()).hexdigest() == seen[str(latest)]
    assert ckpt.load_checkpoint(latest)["step"] == 10
    assert not partials(disk)


def test_a_checkpoint_whose_write_fails_keeps_the_previous_one(finished, tmp_path, monkeypatch, capsys):
    """The same with a patched write (no mount needed): ENOSPC from the file under torch.save."""
    seen = _spy_on_checkpoints(monkeypatch)
    real_write = mt_io._WatchedFile.write

    def write(self, data):
        name = os.fspath(self.name)
        if name.endswith(mt_io.PARTIAL_SUFFIX) and ".checkpoint.pt." in name and seen.get(str(tmp_path / "run" / "checkpoint.pt")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a checkpoint.pt exists: the disk is now full
        return real_write(self, data)

    monkeypatch.setattr(mt_io._WatchedFile, "write", write)
    run = tmp_path / "run"
    assert main(_train_into(finished, run)) == 1
    assert_no_space(capsys.readouterr().err, run / "checkpoint.pt")
    assert hashlib.sha256((run / "checkpoint.pt").read_bytes()).hexdigest() == seen[str(run / "checkpoint.pt")]
    assert ckpt.load_checkpoint(run)["step"] == 10
    assert not partials(tmp_path)


def test_a_checkpoint_is_refused_before_writing_when_the_disk_has_no_room(finished, small_disk):
    """The free-space check: the estimate from the tensors' sizes is refused at once, nothing written."""
    state = ckpt.load_checkpoint(finished / "run")
    size = (finished / "run" / "checkpoint.pt").stat().st_size
    disk = small_disk(int(size * 0.9))
    (disk / "checkpoint.pt").write_bytes(b"the previous checkpoint")
    with pytest.raises(StorageFaultError, match=f"cannot write {disk / 'checkpoint.pt'}: {NO_SPACE} for it") as caught:
        ckpt.save_run_checkpoint(state, disk)
    assert caught.value.exit_status == 1 and str(caught.value).endswith(WHAT_TO_DO)
    assert (disk / "checkpoint.pt").read_bytes() == b"the previous checkpoint"
    assert not partials(disk)
    assert ckpt.tensor_bytes(state) <= size < ckpt.tensor_bytes(state) * 1.1  # the estimate is close to the file


def _state(step: int) -> dict:
    return {"format": ckpt.FORMAT_VERSION, "step": step, "weights": torch.full((1000,), float(step))}


def test_kept_checkpoints_are_independent_copies(tmp_path):
    """Damage to checkpoint.pt in place must not reach the kept copy of the same step (hard links shared it),
    and keep=3 keeps three checkpoints besides checkpoint.pt."""
    for step in range(1, 6):
        ckpt.save_run_checkpoint(_state(step), tmp_path, keep=3)
    kept = sorted((tmp_path / ckpt.HISTORY_DIR).glob("step-*.pt"))
    assert [p.name for p in kept] == [f"step-{s:09d}.pt" for s in (3, 4, 5)]
    files = [tmp_path / ckpt.CHECKPOINT_NAME, *kept]
    assert all(p.stat().st_nlink == 1 for p in files)
    assert len({p.stat().st_ino for p in files}) == 4
    latest = tmp_path / ckpt.CHECKPOINT_NAME
    data = bytearray(latest.read_bytes())
    data[-200] ^= 0xFF
    with open(latest, "r+b") as f:  # in place, as a faulty disk or an editor would
        f.write(data)
    newest = ckpt.load_checkpoint(kept[-1])
    assert newest["step"] == 5 and torch.equal(newest["weights"], _state(5)["weights"])


def test_a_kept_hard_link_of_an_older_version_becomes_a_copy(tmp_path):
    ckpt.save_run_checkpoint(_state(1), tmp_path, keep=2)
    history = tmp_path / ckpt.HISTORY_DIR
    ckpt.save_checkpoint(_state(2), tmp_path / ckpt.CHECKPOINT_NAME)
    os.link(tmp_path / ckpt.CHECKPOINT_NAME, history / "step-000000002.pt")  # as versions before this one kept it
    ckpt.save_run_checkpoint(_state(2), tmp_path, keep=2)
    assert (history / "step-000000002.pt").stat().st_nlink == 1


# ---------------------------------------------------------------------------------------------------
# Exports


def _export(finished: Path, fmt: str, out: Path) -> list[str]:
    return ["export", "--checkpoint", str(finished / "run"), "--format", fmt, "--out", str(out)]


def _previous_export(finished: Path, fmt: str, folder: Path) -> Path:
    out = folder / f"model.{fmt}"
    shutil.copyfile(finished / f"model.{fmt}", out)
    shutil.copyfile(finished / f"model.{fmt}.json", folder / f"model.{fmt}.json")
    return out


@pytest.mark.parametrize("checked", [True, False], ids=["refused-before", "fails-while-writing"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_an_export_onto_a_full_disk_keeps_the_previous_one(finished, small_disk, monkeypatch, capsys, fmt, checked):
    """A previous export and room for half of another: the check refuses it, or (check off) the library
    meets ENOSPC (safetensors: SafetensorError; TorchScript: aborted the process before)."""
    size = (finished / f"model.{fmt}").stat().st_size
    disk = small_disk(int(size * 1.5) + (1 << 20))
    out = _previous_export(finished, fmt, disk)
    before = snapshot(disk)
    if not checked:
        monkeypatch.setattr(mt_io, "require_space", lambda path, nbytes: None)
    assert main(_export(finished, fmt, out)) == 1
    assert_no_space(capsys.readouterr().err, out)
    assert snapshot(disk) == before and not partials(disk)


def _half_then(failure: BaseException) -> Callable[..., None]:
    """A library writer that writes some bytes to its path, then fails the way the real one does on a full disk."""

    def write(*args, **kwargs) -> None:
        path = next(a for a in (*args, *kwargs.values()) if isinstance(a, (str, Path)) and mt_io.PARTIAL_SUFFIX in str(a))
        with open(path, "wb") as f:
            f.write(b"\0" * 4096)
        raise failure

    return write


def _patch_full_disk(monkeypatch, fmt: str) -> None:
    """Each format's writer as it fails on a full disk (seen on a tmpfs): its own exception, its own words."""
    if fmt == "safetensors":
        import safetensors.torch
        from safetensors import SafetensorError

        failure = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        monkeypatch.setattr(safetensors.torch, "save_file", _half_then(failure))
    elif fmt == "onnx":
        monkeypatch.setattr(torch.onnx, "export", _half_then(OSError(errno.ENOSPC, "No space left on device")))
    else:  # TorchScript is written through Path.write_bytes
        monkeypatch.setattr(Path, "write_bytes", lambda self, data: _half_then(OSError(errno.ENOSPC, "No space left on device"))(str(self)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_export_whose_write_fails_keeps_the_previous_one(finished, tmp_path, monkeypatch, capsys, fmt):
    out = _previous_export(finished, fmt, tmp_path)
    before = snapshot(tmp_path)
    _patch_full_disk(monkeypatch, fmt)
    assert main(_export(finished, fmt, out)) == 1
    assert_no_space(capsys.readouterr().err, out)
    assert snapshot(tmp_path) == before and not partials(tmp_path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_exports_follow_the_umask(finished, fmt):
    """Written under umask 027 (the module's fixture): 0640, safetensors included (it made 0600 files)."""
    for path in (finished / f"model.{fmt}", finished / f"model.{fmt}.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return "a FIFO (named pipe), not a regular file"


def _socket(path: Path) -> str:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays
    return "a socket, not a regular file"


def _link_to_fifo(path: Path) -> str:
    os.mkfifo(path.with_name("pipe"))
    path.symlink_to(path.with_name("pipe"))
    return f"a symbolic link to {path.with_name('pipe')}, which is a FIFO (named pipe), not a regular file"


@pytest.mark.parametrize("make", [_fifo, _socket, _link_to_fifo])
def test_an_export_onto_something_not_a_regular_file_is_refused(finished, tmp_path, capsys, make):
    out = tmp_path / "model.safetensors"
    words = make(out)
    before = {p.name: (os.lstat(p).st_mode, os.lstat(p).st_ino) for p in tmp_path.iterdir()}
    assert main(_export(finished, "safetensors", out)) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"metrictransfer: error: cannot write {out}: it is {words}") and "choose another path" in line, line
    assert {p.name: (os.lstat(p).st_mode, os.lstat(p).st_ino) for p in tmp_path.iterdir()} == before


def test_an_export_onto_a_device_is_refused(finished, tmp_path, monkeypatch, capsys):
    """A character device (as /dev/full is), seen through a patched stat: never the real device."""
    out = tmp_path / "full.onnx"
    out.write_bytes(b"stands for a device")
    real_stat = os.stat

    def fake_stat(path, *args, **kwargs):
        found = real_stat(path, *args, **kwargs)
        if os.fspath(path) == str(out):
            return os.stat_result((stat.S_IFCHR | 0o666, *tuple(found)[1:]))
        return found

    monkeypatch.setattr(os, "stat", fake_stat)
    assert main(_export(finished, "onnx", out)) == 2
    line = one_line(capsys.readouterr().err)
    assert f"cannot write {out}: it is a character device, not a regular file" in line, line
    monkeypatch.undo()
    assert out.read_bytes() == b"stands for a device" and not (tmp_path / "full.onnx.json").exists()


def test_an_export_whose_description_path_is_a_fifo_writes_nothing(finished, tmp_path, capsys):
    out = tmp_path / "model.safetensors"
    os.mkfifo(tmp_path / "model.safetensors.json")
    assert main(_export(finished, "safetensors", out)) == 2
    assert "model.safetensors.json: it is a FIFO" in one_line(capsys.readouterr().err)
    assert not out.exists() and stat.S_ISFIFO(os.lstat(tmp_path / "model.safetensors.json").st_mode)


def test_atomic_writes_replace_only_regular_files(tmp_path):
    """The rule in io: a FIFO is refused; a symbolic link to a regular file is replaced by the new file,
    and the file it pointed to is left as it was (only the named path is written)."""
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(OutputLocationError, match="it is a FIFO"):
        mt_io.atomic_write_text("text", tmp_path / "pipe")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "pipe").st_mode) and not partials(tmp_path)
    (tmp_path / "theirs.txt").write_text("their words")
    (tmp_path / "link.txt").symlink_to(tmp_path / "theirs.txt")
    mt_io.atomic_write_text("ours", tmp_path / "link.txt")
    assert not (tmp_path / "link.txt").is_symlink() and (tmp_path / "link.txt").read_text() == "ours"
    assert (tmp_path / "theirs.txt").read_text() == "their words"


# ---------------------------------------------------------------------------------------------------
# Indexes


def _index(finished: Path, out: Path, *extra: str) -> list[str]:
    return [
        "index",
        "--checkpoint",
        str(finished / "run"),
        "--images",
        str(finished / "gallery"),
        "--out",
        str(out),
        "--device",
        "cpu",
        *extra,
    ]


def _faiss_meets_a_full_disk(monkeypatch, disk: Path | None) -> None:
    """The disk fills up just before faiss.index is written: a real one on a tmpfs, else a patched write
    of the staged faiss file that writes part of it and fails with ENOSPC."""
    faiss = pytest.importorskip("faiss")
    if disk is not None:
        real_serialize = faiss.serialize_index
        monkeypatch.setattr(faiss, "serialize_index", lambda index: (fill(disk), real_serialize(index))[1])
        return
    real_write_bytes = Path.write_bytes

    def write_bytes(self, data):
        if not self.name.startswith(".faiss.index."):
            return real_write_bytes(self, data)
        real_write_bytes(self, bytes(data)[:4096])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


# faiss.write_index buffers a small index in stdio and only prints "close error" when fclose meets the full
# disk, so the truncated file would pass as written: gallery._write_faiss writes faiss.serialize_index's
# bytes through Python, whose close raises ENOSPC. The tmpfs case catches a return to faiss.write_index.


@pytest.mark.parametrize("real_disk", [pytest.param(True, id="tmpfs"), pytest.param(False, id="patched")])
def test_an_index_whose_faiss_file_meets_a_full_disk_keeps_the_previous_one(finished, small_disk, tmp_path, monkeypatch, capsys, real_disk):
    folder = small_disk(96 << 20) if real_disk else tmp_path  # the index keeps its model as ONNX (about 20 MB)
    out = folder / "index"
    assert main(_index(finished, out)) == 0
    capsys.readouterr()
    before = snapshot(out)
    _faiss_meets_a_full_disk(monkeypatch, folder if real_disk else None)
    assert main(_index(finished, out, "--overwrite")) == 1
    assert_no_space(capsys.readouterr().err, out / "faiss.index")
    after = snapshot(out)
    for name in ("index.json", "faiss.index"):
        assert after[name] == before[name], name
    assert not partials(folder)


def test_an_index_onto_a_full_disk_keeps_the_previous_one(finished, small_disk, capsys):
    disk = small_disk(96 << 20)  # the index keeps its model as ONNX (about 20 MB)
    out = disk / "index"
    assert main(_index(finished, out)) == 0
    capsys.readouterr()
    before = snapshot(out)
    fill(disk)
    assert main(_index(finished, out, "--overwrite")) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"metrictransfer: error: cannot write {out}") and NO_SPACE in line and line.endswith(WHAT_TO_DO), line
    assert snapshot(out) == before and not partials(disk)


# ---------------------------------------------------------------------------------------------------
# distill's resume hint


def _photos(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / f"{i}.jpg")
    return root


def _distill(tmp_path: Path, weights: Path) -> list[str]:
    return [
        "distill", "--source", "resnet10t", "--source-weights", str(weights), "--source-image-size", "48",
        "--target", "resnet10t", "--dim", "8", "--images", str(_photos(tmp_path / "photos")), "--image-size", "32",
        "--epochs", "1", "--batch-size", "8", "--out", str(tmp_path / "run"), "--set", "threads=1",
        "--set", "data.holdout_images=0.25", "--set", "eval.agreement_at=[1]",  # 4 held-out images: agreement@1 means something
    ]  # fmt: skip


def test_distill_that_fails_before_training_names_no_folder_to_resume(tmp_path, capsys):
    """The start fails (weights that are not a state dict) and removes the folder it made: no resume hint."""
    (tmp_path / "teacher.pt").write_bytes(b"not a state dict")
    assert main(_distill(tmp_path, tmp_path / "teacher.pt")) == 2
    assert "resume" not in one_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_distill_names_the_folder_to_resume_once_it_holds_the_recipe(tmp_path, monkeypatch, capsys):
    """Interrupted as training starts: the hint is printed and what it names is there to resume."""
    import timm

    torch.manual_seed(0)
    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), tmp_path / "teacher.pt")

    def fit(self):
        for callback in self.callbacks:
            callback.on_fit_start(self)
        assert (tmp_path / "run" / "config.yaml").is_file()
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Trainer, "fit", fit)
    assert main(_distill(tmp_path, tmp_path / "teacher.pt")) == 130
    hint = f"(resume: metrictransfer train --resume {tmp_path / 'run'})"
    assert hint in capsys.readouterr().err
    assert (tmp_path / "run" / "config.yaml").is_file()
