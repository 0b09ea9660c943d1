"""Folders the tool owns (a run, an index): a manifest of what it wrote, so nothing else is ever touched.

Every output folder holds ``.metrictransfer.json``: which kind of output it is and every file the tool wrote
there, with its size and, for the files a later command reads back, its SHA-256. From it follow the rules
of :func:`claim_output`:

- a new output goes only into a folder that is new, empty, or already ours; a folder holding anything the
  tool did not write (a person's ``report.md``, another tool's ``checkpoints/``) is refused as a whole;
- ``--overwrite`` deletes the files the manifest lists, nothing else;
- an output inside another run or index is refused (deleting one would delete the other);
- a file read back is checked against its recorded digest (:func:`verify_recorded`), so an edited or
  damaged ``results.json`` is named instead of reported from.

Checkpoints are recorded by size only: they carry a checksum of their own content, and hashing hundreds of
megabytes at every save would slow training for nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

from metrictransfer import __version__
from metrictransfer.errors import DataError, OutputLocationError, RunExistsError, RunLockedError, is_output_problem, output_error
from metrictransfer.io import PARTIAL_SUFFIX, atomic_write_text, file_sha256, remove_stale_partials

MANIFEST_NAME = ".metrictransfer.json"
MANIFEST_FORMAT = "metrictransfer output folder"

try:
    import fcntl
except ImportError:  # Windows: no flock; folders there are not protected against a second process
    fcntl = None  # type: ignore[assignment]
LOCK_NAME = ".lock"
# What each kind of folder writes (the names a manifest may list at its top level; glob patterns for the
# files an index writes per generation of updates), and whether one kind may not hold another inside it.
KIND_FILES: dict[str, tuple[str, ...]] = {
    "run": (
        "config.yaml",
        "checkpoint.pt",
        "checkpoints",
        "best.pt",
        "results.json",
        "log.csv",
        "recall.png",
        "curves.png",
        "retrieval.png",
        "embedding_map.png",
        "report.md",
        "tensorboard",
    ),
    "index": (
        "index.json",
        "catalogue.sqlite",
        "model.onnx",
        "model.onnx.json",
        "vectors*.npy",
        "faiss*.index",
        "faiss*.ivfdata",
        "embeddings*.npz",
    ),
    "demo": ("config.json", "results.json", "log.csv", "recall.png", "report.md"),
}
KIND_WORDS = {"run": "a run", "index": "a search index", "demo": "a demo"}
# Kinds whose folders hold outputs of their own (a demo's runs): those are recorded as {"output": true}, are
# claimed (and cleared) by their own writer, and may lie inside.
HOLDS_OUTPUTS = ("demo",)
_SIZE_ONLY = (".pt", ".npy", ".ivfdata")
_Lock = TypeVar("_Lock", bound="OutputLock")  # files that verify themselves (see the module's docstring)


class DamagedFileError(DataError):
    """A file whose bytes differ from those the tool recorded when it wrote them."""


class Manifest:
    """``.metrictransfer.json`` of one folder: its kind and the files (relative paths) written there."""

    def __init__(self, folder: Path, kind: str, files: dict[str, dict[str, Any]] | None = None) -> None:
        self.folder, self.kind, self.files = folder, kind, dict(files or {})

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST_NAME

    @classmethod
    def read(cls, folder: str | os.PathLike[str]) -> "Manifest | None":
        """The folder's manifest; None when it has none. One that cannot be read is an error naming it:
        without it we cannot tell the tool's files from anyone else's."""
        folder = Path(folder)
        path = folder / MANIFEST_NAME
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DamagedFileError(
                f"{path} (metrictransfer's record of the files it wrote there) is damaged ({err}); "
                f"move the files you want to keep out of {folder} and delete it"
            ) from None
        if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT or raw.get("kind") not in KIND_FILES:
            raise DamagedFileError(f"{path} is not a metrictransfer manifest; move the files you want to keep out of {folder}, delete it")
        files = raw.get("files")
        return cls(folder, raw["kind"], files if isinstance(files, dict) else {})

    def write(self) -> None:
        record = {"format": MANIFEST_FORMAT, "version": 1, "kind": self.kind, "metrictransfer": __version__, "files": self.files}
        atomic_write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", self.path)

    def record(self, *names: str) -> None:
        """Note ``names`` (relative paths the tool has just written) with their size and digest, forget
        those that no longer exist, and write the manifest."""
        for name in names:
            path = self.folder / name
            if path.is_dir() and not path.is_symlink():
                self.files[name] = {"folder": True}
            elif path.is_file() and not path.is_symlink():
                entry: dict[str, Any] = {"bytes": path.stat().st_size}
                if not name.endswith(_SIZE_ONLY):
                    entry["sha256"] = file_sha256(path)
                self.files[name] = entry
            else:
                self.files.pop(name, None)
        self.write()

    def record_output(self, name: str) -> None:
        """Note ``name``, a folder holding an output of its own (see :data:`HOLDS_OUTPUTS`)."""
        self.files[name] = {"output": True}
        self.write()

    def record_present(self, after_failure: bool = False) -> None:
        """Record every file of this kind that is in the folder now (after a phase of writing). With
        ``after_failure`` a failure to write the manifest (the disk that failed the output is full) is
        ignored, so the error the user sees is the one that stopped the output; the files are recorded at
        the folder's next claim, and ``--overwrite`` deletes this kind's files whether recorded or not."""
        names = sorted(set(self.files) | set(kind_names(self.folder, self.kind)))
        if not after_failure:
            self.record(*names)
            return
        with contextlib.suppress(OSError):
            self.record(*names)

    def remove_files(self) -> None:
        """Delete what the manifest lists (``--overwrite``) and the names this kind writes (a run killed
        before it recorded its newest files wrote them: the folder was ours from its start), nothing else."""
        names = set(self.files) | set(kind_names(self.folder, self.kind))
        for name in sorted(names, reverse=True):
            if self.files.get(name, {}).get("output"):
                continue  # an output of its own (a demo's run): its own claim clears it
            path = self.folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        self.files = {name: entry for name, entry in self.files.items() if entry.get("output")}
        self.write()


class OutputLock:
    """An exclusive lock on an output folder, held from :meth:`acquire` to :meth:`release`: an OS file lock
    (``flock``), which the kernel releases when the process ends, however it ends, so no stale lock is ever
    left to clean up by hand. The lock file records the holder's PID, host and start time so that a refused
    second process can name it."""

    activity = "process"  # what holds such locks, in the message of a refused second one

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self.manifest: Manifest | None = None  # set when the folder is claimed: what has been written there

    def acquire(self: _Lock) -> _Lock:
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
                    f"{self.folder} is in use by another {self.activity} ({self.holder()}); wait for it to end, or write to another --out"
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

    def __enter__(self: _Lock) -> _Lock:
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def make_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents), naming a file in the way or an unwritable place."""
    if folder.exists() and not folder.is_dir():
        raise OutputLocationError(f"{folder} is a file, not a folder; give a folder (--out)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputLocationError(f"cannot create {folder}: a part of the path is a file, not a folder") from None
    except OSError as err:
        raise (output_error(err, folder) if is_output_problem(err) else err) from None


def is_ours(name: str) -> bool:
    """The lock, the manifest and temporaries of killed writers: present in any folder the tool uses."""
    return name in (LOCK_NAME, MANIFEST_NAME) or (name.startswith(".") and name.endswith(PARTIAL_SUFFIX))


def enclosing_output(folder: Path) -> Manifest | None:
    """The manifest of a run or index that holds ``folder`` (at any depth), if one does."""
    for parent in folder.resolve().parents:
        if (parent / MANIFEST_NAME).is_file():
            try:
                outer = Manifest.read(parent)
            except DamagedFileError:
                return Manifest(parent, "run")  # damaged, but still someone's output: do not nest
            if outer is not None and outer.kind not in HOLDS_OUTPUTS:
                return outer
    return None


def check_placement(folder: Path, kind: str, option: str = "--out") -> None:
    """Refuse ``folder`` as a new output when it is a file, or lies inside another run or index."""
    if folder.exists() and not folder.is_dir():
        raise OutputLocationError(f"{folder} is a file, not a folder; give a folder for the {kind} ({option})")
    outer = enclosing_output(folder)
    if outer is not None:
        raise OutputLocationError(
            f"{folder} is inside {KIND_WORDS[outer.kind]} ({outer.folder}); choose a folder outside it with {option}: "
            f"replacing either would delete files of the other"
        )


# The file whose presence, without a manifest, marks a folder written by a version that kept none.
LEGACY_MARK = {"run": "config.yaml", "index": "index.json", "demo": "config.json"}


def claim_output(
    folder: Path,
    kind: str,
    lock: _Lock,
    resume: bool = False,
    overwrite: bool = False,
    already_holds: Callable[[Path], str | None] | None = None,
    option: str = "--out",
    clear: bool = True,
) -> _Lock:
    """Create and lock ``folder`` for an output of ``kind``, enforcing the module's rules: a folder holding
    anything the tool did not write, or inside another run or index, is refused before anything is written
    in it. A new output (``resume`` False) into a folder holding one of its kind is refused with the message
    ``already_holds`` gives (None: it holds none), unless ``overwrite``, which deletes that output's files
    (files a person added are kept) first, or with ``clear`` False leaves them for the writer to replace.
    Temporaries a killed writer left are removed. Returns ``lock``, held, with the folder's manifest in
    ``lock.manifest``."""
    check_placement(folder, kind, option)
    mark = folder / LEGACY_MARK[kind]
    if not mark.is_file():
        refuse_foreign(folder, option)  # before the lock file is created in a folder that is not ours
    lock.acquire()
    try:
        manifest = Manifest.read(folder)
        if manifest is not None and manifest.kind != kind:
            raise OutputLocationError(f"{folder} holds {KIND_WORDS[manifest.kind]}, not {KIND_WORDS[kind]}; choose another {option}")
        legacy = manifest is None and mark.is_file()
        if manifest is None and not legacy:
            refuse_foreign(folder, option)  # again, under the lock
        if manifest is None:
            manifest = Manifest(folder, kind)
        held = already_holds(folder) if already_holds is not None and not resume else None
        if held is not None:
            if not overwrite:
                raise RunExistsError(held)
            if legacy:
                raise RunExistsError(
                    f"{folder} holds {KIND_WORDS[kind]} written before metrictransfer recorded the files it writes, so "
                    f"--overwrite cannot tell them from yours; delete the folder yourself, or choose another {option}"
                )
            if clear:
                manifest.remove_files()
        if legacy:
            manifest.record_present()  # from now on, its files are recorded
        elif not manifest.path.is_file():
            manifest.write()
        for place in [folder] + [p for p in folder.iterdir() if p.is_dir() and p.name in manifest.files]:
            remove_stale_partials(place)
        lock.manifest = manifest
    except BaseException:
        lock.release()
        raise
    return lock


def kind_names(folder: Path, kind: str) -> list[str]:
    """The names in ``folder`` (links included) that ``kind`` writes, patterns expanded."""
    return sorted({p.name for pattern in KIND_FILES[kind] for p in folder.glob(pattern) if p.exists() or p.is_symlink()})


def refuse_foreign(folder: Path, option: str = "--out") -> None:
    """Refuse a folder without a manifest that holds anything the tool did not write. (In a folder that is
    ours, a person's own files are kept and left alone: ``--overwrite`` deletes only the tool's.)"""
    if not folder.is_dir() or (folder / MANIFEST_NAME).is_file():
        return
    foreign = sorted(p.name for p in folder.iterdir() if not is_ours(p.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputLocationError(
            f"{folder} holds files metrictransfer did not write ({shown}); nothing was changed: choose a new or empty folder with {option}"
        )


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


def verify_recorded(path: str | os.PathLike[str], advice: str) -> None:
    """Check ``path`` against the SHA-256 its folder's manifest recorded when the tool wrote it; a file
    with no record (an output of an earlier version, or a copy) is not checked."""
    path = Path(path)
    manifest = Manifest.read(path.parent)
    entry = manifest.files.get(path.name) if manifest else None
    if not entry or "sha256" not in entry:
        return
    if file_sha256(path) != entry["sha256"]:
        raise DamagedFileError(
            f"{path} is not the file metrictransfer wrote (its SHA-256 differs from the one recorded in "
            f"{path.parent / MANIFEST_NAME}): it was edited or damaged; {advice}"
        )
