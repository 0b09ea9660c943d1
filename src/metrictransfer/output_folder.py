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

import json
import os
import shutil
from pathlib import Path
from typing import Any

from metrictransfer import __version__
from metrictransfer.errors import DataError, OutputLocationError, RunExistsError
from metrictransfer.io import PARTIAL_SUFFIX, atomic_write_text, file_sha256

MANIFEST_NAME = ".metrictransfer.json"
MANIFEST_FORMAT = "metrictransfer output folder"
LOCK_NAME = ".lock"
# What each kind of folder writes (the names a manifest may list at its top level), and whether one kind
# may not hold another inside it.
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
    "index": ("index.json", "embeddings.npz", "faiss.index"),
}
KIND_WORDS = {"run": "a run", "index": "a search index"}
_SIZE_ONLY = (".pt",)  # files that verify themselves (see the module's docstring)


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

    def record_present(self) -> None:
        """Record every file of this kind that is in the folder now (after a phase of writing)."""
        self.record(*sorted(set(self.files) | {n for n in KIND_FILES[self.kind] if (self.folder / n).exists()}))

    def remove_files(self) -> None:
        """Delete what the manifest lists (``--overwrite``) and the names this kind writes (a run killed
        before it recorded its newest files wrote them: the folder was ours from its start), nothing else."""
        names = set(self.files) | {n for n in KIND_FILES[self.kind] if (self.folder / n).exists() or (self.folder / n).is_symlink()}
        for name in sorted(names, reverse=True):
            path = self.folder / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        self.files = {}
        self.write()


def is_ours(name: str) -> bool:
    """The lock, the manifest and temporaries of killed writers: present in any folder the tool uses."""
    return name in (LOCK_NAME, MANIFEST_NAME) or (name.startswith(".") and name.endswith(PARTIAL_SUFFIX))


def foreign_entries(folder: Path, manifest: Manifest | None) -> list[str]:
    """The names at the top of ``folder`` that the tool did not write."""
    listed = {name.split("/")[0] for name in (manifest.files if manifest else {})}
    return sorted(p.name for p in folder.iterdir() if not is_ours(p.name) and p.name not in listed)


def enclosing_output(folder: Path) -> Manifest | None:
    """The manifest of a run or index that holds ``folder`` (at any depth), if one does."""
    for parent in folder.resolve().parents:
        if (parent / MANIFEST_NAME).is_file():
            try:
                return Manifest.read(parent)
            except DamagedFileError:
                return Manifest(parent, "run")  # damaged, but still someone's output: do not nest
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


def adopt_or_refuse(folder: Path, kind: str, legacy: bool, resume: bool, overwrite: bool, option: str = "--out") -> Manifest:
    """The manifest of ``folder`` for a new output (``resume`` False) or for continuing one, enforcing the
    module's rules; ``legacy``: the folder holds this kind's files from a version that wrote no manifest."""
    manifest = Manifest.read(folder)
    if manifest is not None and manifest.kind != kind:
        raise OutputLocationError(f"{folder} holds {KIND_WORDS[manifest.kind]}, not {KIND_WORDS[kind]}; choose another {option}")
    if manifest is None and legacy:
        if resume:  # written by an earlier version: continue it, and from now on record its files
            manifest = Manifest(folder, kind)
            manifest.record_present()
            return manifest
        if overwrite:
            raise RunExistsError(
                f"{folder} holds {KIND_WORDS[kind]} written before metrictransfer recorded the files it writes, so "
                f"--overwrite cannot tell them from yours; delete the folder yourself, or choose another {option}"
            )
        return Manifest(folder, kind)  # the caller says it already holds one
    if manifest is None:
        refuse_foreign(folder, option)
        manifest = Manifest(folder, kind)
        manifest.write()
    return manifest


def refuse_foreign(folder: Path, option: str = "--out") -> None:
    """Refuse a folder without a manifest that holds anything the tool did not write. (In a folder that is
    ours, a person's own files are kept and left alone: ``--overwrite`` deletes only the tool's.)"""
    if not folder.is_dir() or (folder / MANIFEST_NAME).is_file():
        return
    foreign = foreign_entries(folder, None)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputLocationError(
            f"{folder} holds files metrictransfer did not write ({shown}); nothing was changed: choose a new or empty folder with {option}"
        )


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
