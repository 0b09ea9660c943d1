"""Files written so that a crash, a full disk or a kill -9 never leaves a damaged or half-written one.

Every file metrictransfer writes goes through :func:`atomic_write` (or :func:`staged_path` for
libraries that insist on writing to a path themselves): the bytes go to a temporary file beside the
target, are flushed to disk, and only then renamed over the target, so readers see the old file or
the new one, never a mixture. Temporary files carry the suffix :data:`PARTIAL_SUFFIX` so that
:func:`remove_stale_partials` can find the ones a killed process left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from metrictransfer.errors import is_output_problem, output_error

PARTIAL_SUFFIX = ".partial"
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask (Python has no getter: set and restore it, under a lock)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _new_temporary(path: Path) -> tuple[int, Path]:
    """A temporary file beside ``path`` with the permissions a plain ``open(path, "w")`` would give
    (``mkstemp`` makes 0600 files, which colleagues sharing a cluster file system could not read)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())
    return fd, Path(tmp)


def make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise output_error(OSError(20, "Not a directory"), path.parent) from None
    except OSError as err:
        if is_output_problem(err):
            raise output_error(err, path.parent) from None
        raise


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[Any]], object], mode: str) -> None:
    """Write through ``write`` to a temporary file in the same folder, fsync, then rename over ``path``:
    a crash leaves either the old file or the new one, never a truncated one. A full, read-only or
    forbidden place is reported as an :class:`~metrictransfer.errors.OutputLocationError` naming ``path``."""
    with staged_path(path) as tmp, open(tmp, mode) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(text: str, path: str | os.PathLike[str]) -> None:
    atomic_write(path, lambda f: f.write(text), "w")


def atomic_copy(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Copy ``source`` over ``path`` atomically (a fresh file: never shares an inode with ``source``)."""
    with open(source, "rb") as src:
        atomic_write(path, lambda f: shutil.copyfileobj(src, f, 1 << 20), "wb")


@contextlib.contextmanager
def staged_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` for a library that writes files itself (TorchScript, ONNX,
    faiss): the caller writes and checks it inside the ``with`` block; on a clean exit it replaces
    ``path``, on any error or interruption it is removed and ``path`` is untouched."""
    path = Path(path)
    make_parent(path)
    try:
        fd, tmp = _new_temporary(path)
    except OSError as err:
        raise (output_error(err, path) if is_output_problem(err) else err) from None
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if is_output_problem(err):
            raise output_error(err, path) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_stale_partials(folder: str | os.PathLike[str], name: str = "*") -> list[Path]:
    """Delete the temporary files that killed writers of ``folder/name`` (every file by default) left
    behind; call it only while no other process can be writing them (e.g. holding the run's lock)."""
    folder = Path(folder)
    found = list(folder.glob(f".{name}.*{PARTIAL_SUFFIX}"))
    # before the suffix existed, temporaries were ".NAME.XXXXXXXX" (mkstemp's 8 random characters)
    found += [p for p in folder.glob(f".{name}.*") if _legacy_temporary(p)]
    for stale in found:
        stale.unlink(missing_ok=True)
    return found


def _legacy_temporary(path: Path) -> bool:
    stem, _, tail = path.name[1:].rpartition(".")
    return bool(stem) and len(tail) == 8 and (path.parent / stem).exists() and path.is_file()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (export descriptions and index records keep it to recognise their file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
