"""Checkpoints written atomically with a checksum of their content, verified when loaded; loading a
trained embedding model back from a run (by the commands, and by methods that start from another run's
model). The training loop's checkpoint contents are built in :mod:`metrictransfer.engine.trainer`."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from metrictransfer.config import RunConfig, build_config, config_to_dict
from metrictransfer.errors import CheckpointError, DamagedCheckpointError, MissingFileError
from metrictransfer.io import atomic_copy, atomic_write
from metrictransfer.models import EmbeddingModel
from metrictransfer.runtime.provenance import TRAINING_DATA_KEY

CHECKPOINT_NAME = "checkpoint.pt"
HISTORY_DIR = "checkpoints"
# 2: loadable with weights_only=True (no pickled numpy or Python objects), written with the package version.
FORMAT_VERSION = 2


CHECKSUM_KEY = "checksum"


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` atomically, after checking the disk has room for its tensors (a full disk is one
    line naming ``path``; the previous file stays)."""
    atomic_write(path, lambda f: torch.save(obj, f), "wb", size=tensor_bytes(obj))


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (nested dicts, lists, tuples) as ``torch.save`` writes them: each
    storage once, whole; the estimate of a checkpoint's or an export's size that the free-space check uses."""
    storages: dict[tuple[str, int], int] = {}

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            storages[(str(value.device), storage.data_ptr())] = storage.nbytes()
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    visit(obj)
    return sum(storages.values())


def content_digest(obj: Any) -> str:
    """SHA-256 of a checkpoint's content: every tensor's dtype, shape and bytes, every other value's repr,
    in order. torch's zip container does not check its CRCs on load, so flipped bytes inside a weight
    tensor would otherwise load silently."""
    digest = hashlib.sha256()

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().to("cpu").contiguous().reshape(-1)
            digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}".encode())
            for key, item in value.items():
                digest.update(repr(key).encode())
                visit(item)
        elif isinstance(value, (list, tuple)):
            digest.update(f"{type(value).__name__[0]}{len(value)}".encode())
            for item in value:
                visit(item)
        else:
            digest.update(f"V{value!r}".encode())

    visit(obj)
    return digest.hexdigest()


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a checkpoint atomically, with the checksum :func:`load_checkpoint` verifies."""
    atomic_save({**state, CHECKSUM_KEY: content_digest(state)}, path)


def save_run_checkpoint(state: dict[str, Any], run_dir: str | os.PathLike[str], keep: int = 1) -> Path:
    """Write ``state`` atomically as the run's ``checkpoint.pt``; with ``keep`` > 1 also keep it as
    ``checkpoints/step-N.pt`` and delete all but the ``keep`` newest there.

    A kept checkpoint is a copy of ``checkpoint.pt`` (its bytes, written atomically), not a hard link:
    damage to one name must not reach the others, and ``keep`` must mean that many checkpoints besides
    the newest. The cost is one more checkpoint's size on disk (``keep`` + 1 files instead of ``keep``)
    and the time to copy it, which is checked for room first like every checkpoint."""
    run_dir = Path(run_dir)
    latest = run_dir / CHECKPOINT_NAME
    save_checkpoint(state, latest)
    if keep > 1:
        history = run_dir / HISTORY_DIR
        history.mkdir(exist_ok=True)
        atomic_copy(latest, history / f"step-{state['step']:09d}.pt")  # a fresh file, even over an old hard link
        for old in sorted(history.glob("step-*.pt"))[:-keep]:
            old.unlink(missing_ok=True)
    return latest


def run_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """A run's checkpoints, newest first: ``checkpoint.pt``, then the kept ones by step."""
    run_dir = Path(run_dir)
    found = [run_dir / CHECKPOINT_NAME] if (run_dir / CHECKPOINT_NAME).is_file() else []
    return found + sorted((run_dir / HISTORY_DIR).glob("step-*.pt"), reverse=True)


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A run folder or a checkpoint file → the checkpoint file, with a clear error when there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise MissingFileError(f"no checkpoint at {path} (expected a run folder holding {CHECKPOINT_NAME}, or the file)")
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's contents, verified against the checksum it was written with. ``weights_only=True``:
    tensors and plain containers only, so a file can never run code while it loads. A damaged file
    (empty, truncated, bytes changed) raises :class:`DamagedCheckpointError`."""
    file = resolve_checkpoint(path)
    if file.stat().st_size == 0:
        raise DamagedCheckpointError(f"cannot read checkpoint {file}: it is empty (0 bytes){_recovery_hint(file)}")
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for a damaged or unsafe file
        reason, damaged = unloadable_reason(file, err)
        if not damaged:
            raise CheckpointError(f"cannot read checkpoint {file}: {reason}") from None
        raise DamagedCheckpointError(f"cannot read checkpoint {file}: {reason}{_recovery_hint(file)}") from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{file} is not a metrictransfer checkpoint")
    if state["format"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{file} has checkpoint format {state['format']}, this metrictransfer reads format {FORMAT_VERSION}; "
            f"use the metrictransfer version that wrote it ({state.get('version', 'before 0.1.0')})"
        )
    expected = state.pop(CHECKSUM_KEY, None)  # None: written before checkpoints carried one
    if expected is not None and content_digest(state) != expected:
        raise DamagedCheckpointError(
            f"cannot read checkpoint {file}: its content fails its checksum (bytes changed after it was written)" + _recovery_hint(file)
        )
    return state


def unloadable_reason(file: Path, err: Exception) -> tuple[str, bool]:
    """Why ``torch.load(file, weights_only=True)`` failed with ``err``, in our words, and whether the file
    may be a damaged one of ours. torch's own message is not passed on: for random bytes it speaks of
    unsafe Python objects and advises ``weights_only=False``, which would run whatever a file from
    elsewhere holds. What metrictransfer writes is a zip archive whose members carry CRC-32 checksums,
    so a file that is not one, or whose checksums fail, is not (or no longer) a file it wrote."""
    not_ours = "not a checkpoint metrictransfer wrote"
    if not zipfile.is_zipfile(file):
        return f"it is {not_ours}: not a PyTorch file, or one truncated or damaged", True
    try:
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()  # reads every member: only on this path, after torch failed
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as zip_err:
        return f"it is {not_ours}, or it is damaged: its zip archive cannot be read ({zip_err})", True
    if bad is not None:
        return f"it is damaged: its part {bad} fails its CRC-32 check (bytes changed after it was written)", True
    if "weights only load failed" in str(err).lower():
        return (
            f"it is {not_ours}: it holds Python objects besides tensors and plain containers (those could run code "
            f"while loading, so it is not loaded; checkpoints of metrictransfer format {FORMAT_VERSION} hold none)"
        ), False
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return f"it is {not_ours}, or it is damaged ({first})", True


def _recovery_hint(file: Path) -> str:
    """What to do about a damaged file: a run's older kept checkpoints can replace it. Nothing for a file
    that is not one of a run's checkpoints (a file of random bytes given as one has no run to repair)."""
    if file.name != CHECKPOINT_NAME and file.parent.name != HISTORY_DIR:
        return ""
    run_dir = file.parent.parent if file.parent.name == HISTORY_DIR else file.parent
    others = [p for p in run_checkpoints(run_dir) if not os.path.samefile(p, file)]  # runs of earlier versions kept hard links
    if not others:
        return "; no other checkpoint of this run is kept (checkpoint.keep), so it cannot be repaired"
    return (
        f"; `metrictransfer train --resume {run_dir}` falls back to the newest intact checkpoint "
        f"in {run_dir / HISTORY_DIR} and repairs {CHECKPOINT_NAME}"
    )


def embedding_model_names(path: str | os.PathLike[str]) -> list[str]:
    """The embedding models a checkpoint holds (one, or every member of a cohort)."""
    state = load_checkpoint(path)
    return [name for name, weights in state["models"].items() if "head.weight" in weights]


def load_embedding_model(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu", name: str | None = None
) -> tuple[EmbeddingModel, RunConfig]:
    """A trained embedding model of a run and the run's configuration: its ``output`` model, or the
    model called ``name`` (a cohort's ``member1``, say), with its weights on ``map_location``."""
    model, config, _ = load_source_model(path, map_location, name)
    return model, config


def load_source_model(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu", name: str | None = None
) -> tuple[EmbeddingModel, RunConfig, dict[str, Any] | None]:
    """:func:`load_embedding_model`, and what the checkpoint records of the data the model trained on
    (:func:`metrictransfer.runtime.provenance.training_data_record`; None in checkpoints written before
    it was recorded, or by :func:`save_embedding_model` without it). The record is part of the content
    the checksum verifies."""
    state = load_checkpoint(path, map_location)
    config = build_config(state["config"], origin=f"configuration stored in {resolve_checkpoint(path)}")
    name = name or state["output"]
    if name not in state["models"] or "head.weight" not in state["models"][name]:
        known = [n for n, w in state["models"].items() if "head.weight" in w]
        raise CheckpointError(f"{resolve_checkpoint(path)} holds no embedding model {name!r}; it holds: {', '.join(known)}")
    # Weights come from the checkpoint: never download or read the original backbone weights again.
    weights = state["models"][name]
    arch = state.get("architectures", {}).get(name, {})
    m = config.model
    # the head's size comes from the weights: a classifier's head has one output per class
    outputs = weights["head.weight"].shape[0]
    model = EmbeddingModel(
        arch.get("backbone", m.backbone), outputs, pretrained=False, weights=None, normalize=arch.get("normalize", m.normalize)
    )
    model.load_state_dict(weights)
    return model.to(map_location), config, state.get(TRAINING_DATA_KEY)


def save_embedding_model(
    model: EmbeddingModel, config: RunConfig, path: str | os.PathLike[str], training_data: dict[str, Any] | None = None
) -> Path:
    """A checkpoint holding one embedding model and its run configuration, readable by
    :func:`load_embedding_model` (and so by ``evaluate``, ``index``, ``export`` and as a transfer source):
    for models trained or converted outside ``metrictransfer train``. ``training_data``: the record of
    its training set (:func:`metrictransfer.runtime.provenance.training_data_record`), which lets runs
    that use it as a source check it for leaks into their evaluation data."""
    path = Path(path)
    state: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "config": config_to_dict(config),
        "output": "model",
        "models": {"model": model.state_dict()},
        "architectures": {"model": model.architecture()},
    }
    if training_data is not None:
        state[TRAINING_DATA_KEY] = training_data
    save_checkpoint(state, path)
    return path


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of the model's weights, in key order: which model built an index."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
