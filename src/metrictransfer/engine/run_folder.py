"""A run folder holds one run, and one process trains into it at a time.

A new run refuses a folder that already holds one (unless asked to replace it), so a finished run's
checkpoint, results and log are never replaced by accident, and a folder holding anything metrictransfer
did not write (see :mod:`metrictransfer.output_folder`). While training, the folder is locked with
an OS file lock (``flock``): the kernel releases it when the process ends, however it ends, so a
killed run can always be resumed and no stale lock is ever left to clean up by hand.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from metrictransfer import __version__
from metrictransfer.config import RunConfig, config_to_dict, resume_differences
from metrictransfer.errors import OutputLocationError, RunExistsError, RunLockedError, is_output_problem, output_error
from metrictransfer.io import remove_stale_partials
from metrictransfer.output_folder import (
    LOCK_NAME,
    MANIFEST_NAME,
    DamagedFileError,
    Manifest,
    adopt_or_refuse,
    check_placement,
    refuse_foreign,
)

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not protected against a second process
    fcntl = None  # type: ignore[assignment]

# What marks a folder as holding a run (what `--overwrite` deletes is in the folder's manifest:
# metrictransfer.output_folder).
RUN_MARKERS = ("config.yaml", "checkpoint.pt", "checkpoints", "results.json")


class RunLock:
    """An exclusive lock on a run folder, held from :meth:`acquire` to :meth:`release`. The lock file
    records the holder's PID, host and start time so that a refused second process can name it."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self.manifest: Manifest | None = None  # set by claim_run_folder: what the run has written

    def acquire(self) -> "RunLock":
        make_folder(self.folder)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise (output_error(err, self.folder) if is_output_problem(err) else err) from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLockedError(
                    f"{self.folder} is in use by another training ({self.holder()}); wait for it to end, or train into another --out"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd
        return self

    def holder(self, wait: float = 2.0) -> str:
        """Who holds the lock, in words (as far as the lock file tells). The holder writes its PID just
        after locking, so a process refused in between waits up to ``wait`` seconds for it."""
        deadline = time.monotonic() + wait
        while True:
            try:
                info = json.loads(self.path.read_text() or "{}")
            except (OSError, ValueError):  # being rewritten
                info = {}
            if info or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if not info:
            return "a process that has not yet written its PID"
        return f"PID {info.get('pid')} on host {info.get('host')}, since {info.get('since')}"

    def release(self) -> None:
        if self._fd is not None:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)  # the file stays: deleting it would let two processes lock different files
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holds_run(folder: str | os.PathLike[str]) -> bool:
    folder = Path(folder)
    return any((folder / name).exists() for name in RUN_MARKERS)


def describe_run(folder: Path) -> str:
    if (folder / "results.json").is_file():
        return "a finished run"
    if (folder / "checkpoint.pt").is_file() or (folder / "checkpoints").is_dir():
        return "an unfinished run"
    return "a run that has not written its first checkpoint"


def make_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents), naming a file in the way or an unwritable place."""
    if folder.exists() and not folder.is_dir():
        raise OutputLocationError(f"{folder} is a file, not a folder; give a folder for the run (--out)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputLocationError(f"cannot create {folder}: a part of the path is a file, not a folder") from None
    except OSError as err:
        raise (output_error(err, folder) if is_output_problem(err) else err) from None


def claim_run_folder(folder: str | os.PathLike[str], resume: bool = False, overwrite: bool = False) -> RunLock:
    """Create and lock ``folder`` for a run. A new run (``resume`` False) goes only into a new or empty
    folder, or one holding a run, which it refuses unless ``overwrite`` (that run's files are deleted first;
    files a person added are kept). A folder holding anything else, or inside another run or index, is
    refused before anything is written in it. Temporary files that a killed writer left behind are
    removed. Returns the held lock (with the folder's manifest); release it when the run ends."""
    folder = Path(folder)
    check_placement(folder, "run")
    refuse_foreign_unless_legacy(folder)  # before the lock file is created in a folder that is not ours
    lock = RunLock(folder).acquire()
    try:
        legacy = (folder / "config.yaml").is_file() and not (folder / MANIFEST_NAME).is_file()
        if not legacy:
            refuse_foreign_unless_legacy(folder)  # again, under the lock
        manifest = adopt_or_refuse(folder, "run", legacy, resume, overwrite)
        if not resume and holds_run(folder):
            if not overwrite:
                what = describe_run(folder)
                advice = "" if what == "a finished run" else f"continue it with `metrictransfer train --resume {folder}`, "
                raise RunExistsError(
                    f"{folder} already holds {what}; {advice}choose another --out, or add --overwrite to replace it "
                    "(its checkpoints, results and log are deleted)"
                )
            manifest.remove_files()
        remove_stale_partials(folder)
        if (folder / "checkpoints").is_dir():
            remove_stale_partials(folder / "checkpoints")
        lock.manifest = manifest
    except BaseException:
        lock.release()
        raise
    return lock


def refuse_foreign_unless_legacy(folder: Path) -> None:
    """A folder holding files the tool did not write is refused, unless it holds a run of a version that
    wrote no manifest (its ``config.yaml``), which is then judged as a run."""
    if not (folder / "config.yaml").is_file():
        refuse_foreign(folder)


def remove_if_unused(folder: Path) -> None:
    """Remove the lock and an empty manifest from a folder a failed start left them in, and the folder
    itself when that empties it."""
    if not folder.is_dir():
        return
    try:
        manifest = Manifest.read(folder)
    except DamagedFileError:
        return
    if manifest is not None and not manifest.files:  # written by this start, which wrote nothing else
        (folder / MANIFEST_NAME).unlink(missing_ok=True)
    if {p.name for p in folder.iterdir()} <= {LOCK_NAME}:
        (folder / LOCK_NAME).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()


def finished_run(folder: str | os.PathLike[str], config: RunConfig) -> dict[str, Any] | None:
    """The results (``results.json``) of the run in ``folder`` when it has trained all its epochs: its results
    are written, and its newest checkpoint, written by this version with this configuration (but for the keys
    a resumed run may change), has ``config.optim.epochs`` epochs done. None otherwise, or when a file cannot
    be read: resuming then continues the run, or says what stops it. Reads the checkpoint's position and
    configuration, not its weights."""
    folder = Path(folder)
    try:
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return None
    import torch  # deferred: only a run with results needs its checkpoint opened

    try:  # memory-mapped: the weights are not read
        state = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # missing, empty or damaged: not known to be finished
        return None
    if not isinstance(state, dict) or not isinstance(results, dict) or state.get("epoch") != config.optim.epochs:
        return None
    if state.get("version") != __version__ or resume_differences(state.get("config") or {}, config_to_dict(config)):
        return None
    return results
