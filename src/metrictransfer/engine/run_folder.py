"""A run folder holds one run, and one process trains into it at a time.

A new run refuses a folder that already holds one (unless asked to replace it), so a finished run's
checkpoint, results and log are never replaced by accident, and a folder holding anything metrictransfer
did not write (see :mod:`metrictransfer.output_folder`). While training, the folder is locked with
an OS file lock (``flock``): the kernel releases it when the process ends, however it ends, so a
killed run can always be resumed and no stale lock is ever left to clean up by hand.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from metrictransfer import __version__
from metrictransfer.config import RunConfig, config_to_dict, resume_differences
from metrictransfer.output_folder import (
    OutputLock,
    claim_output,
    verify_recorded,
)

# What marks a folder as holding a run (what `--overwrite` deletes is in the folder's manifest:
# metrictransfer.output_folder).
RUN_MARKERS = ("config.yaml", "checkpoint.pt", "checkpoints", "results.json")


class RunLock(OutputLock):
    """The lock of a run folder (see :class:`~metrictransfer.output_folder.OutputLock`)."""

    activity = "training"


def holds_run(folder: str | os.PathLike[str]) -> bool:
    folder = Path(folder)
    return any((folder / name).exists() for name in RUN_MARKERS)


def describe_run(folder: Path) -> str:
    if (folder / "results.json").is_file():
        return "a finished run"
    if (folder / "checkpoint.pt").is_file() or (folder / "checkpoints").is_dir():
        return "an unfinished run"
    return "a run that has not written its first checkpoint"


def claim_run_folder(folder: str | os.PathLike[str], resume: bool = False, overwrite: bool = False) -> RunLock:
    """Create and lock ``folder`` for a run. A new run (``resume`` False) goes only into a new or empty
    folder, or one holding a run, which it refuses unless ``overwrite`` (that run's files are deleted first;
    files a person added are kept). A folder holding anything else, or inside another run or index, is
    refused before anything is written in it (:func:`~metrictransfer.output_folder.claim_output`).
    Returns the held lock (with the folder's manifest); release it when the run ends."""
    return claim_output(Path(folder), "run", RunLock(folder), resume, overwrite, _already_holds_run)


def _already_holds_run(folder: Path) -> str | None:
    if not holds_run(folder):
        return None
    what = describe_run(folder)
    if what == "a run that has not written its first checkpoint":
        return None  # a start that failed (a bad image, a crash): nothing trained to lose, so start again
    advice = "" if what == "a finished run" else f"continue it with `metrictransfer train --resume {folder}`, "
    return (
        f"{folder} already holds {what}; {advice}choose another --out, or add --overwrite to replace it "
        "(its checkpoints, results and log are deleted)"
    )


def finished_run(folder: str | os.PathLike[str], config: RunConfig) -> dict[str, Any] | None:
    """The results (``results.json``) of the run in ``folder`` when it has trained all its epochs: its results
    are written, and its newest checkpoint, written by this version with this configuration (but for the keys
    a resumed run may change), has ``config.optim.epochs`` epochs done. None otherwise, or when a file cannot
    be read or differs from what the run recorded writing: resuming then continues the run (a run with all
    its epochs done writes its results again from its checkpoint), or says what stops it. Reads the
    checkpoint's position and configuration, not its weights."""
    folder = Path(folder)
    try:
        verify_recorded(folder / "results.json", "")
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):  # DamagedFileError is a ValueError
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
