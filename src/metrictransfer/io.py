"""Files written so that a crash, a full disk or a kill -9 never leaves a damaged or half-written one.

Every file metrictransfer writes goes through :func:`atomic_write` (or :func:`staged_path` for
libraries that insist on writing to a path themselves): the bytes go to a temporary file beside the
target, are flushed to disk, and only then renamed over the target, so readers see the old file or
the new one, never a mixture. Temporary files carry the suffix :data:`PARTIAL_SUFFIX` so that
:func:`remove_stale_partials` can find the ones a killed process left behind. The new file gets the
mode a plain ``open(path, "w")`` would give under the user's umask, whatever mode the library chose.

A full disk: a large write first asks :func:`require_space` (the estimated size plus a margin), and a
write that still fails for want of space (or quota, or with an I/O error), however the library reports
it (torch's RuntimeError, faiss's RuntimeError, safetensors' SafetensorError), ends in a
:class:`~metrictransfer.errors.StorageFaultError` naming the target, with the temporary removed and the
previous file as it was.

Only regular files are replaced (:func:`check_replaceable`): a target that exists and is a FIFO, a
device, a socket or a folder is refused, since renaming over it would put a model file where the
system's ``/dev/full`` was. A symbolic link is judged by what it points to: a link to one of those is
refused; a link to a regular file (or to nothing) is itself replaced by the new file, and the file it
pointed to is left unchanged: metrictransfer writes only the path it was given, never through a link.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

from metrictransfer.errors import (
    MetricTransferError,
    OutputLocationError,
    StorageFaultError,
    is_output_problem,
    output_error,
)

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

PARTIAL_SUFFIX = ".partial"
#: The free space :func:`require_space` wants beyond the estimate: a tenth of it, and at least this.
SPACE_MARGIN_BYTES = 8 << 20
_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask (Python has no getter: set and restore it, under a lock)."""
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _new_temporary(path: Path, mode: int) -> tuple[int, Path]:
    """A temporary file beside ``path`` with ``mode``, the permissions a plain ``open(path, "w")`` would
    give (``mkstemp`` makes 0600 files, which colleagues sharing a cluster file system could not read)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    os.fchmod(fd, mode)
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


class _WatchedFile(io.FileIO):
    """The raw file under :func:`atomic_write`'s buffered one, keeping the first OSError of a write:
    torch.save turns a full disk into a RuntimeError ("unexpected pos") that has lost the errno."""

    failure: OSError | None = None

    def write(self, data: ReadableBuffer, /) -> int:
        try:
            return super().write(data)
        except OSError as err:
            self.failure = self.failure or err
            raise


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[Any]], object], mode: str, size: int | None = None) -> None:
    """Write through ``write`` to a temporary file in the same folder, fsync, then rename over ``path``:
    a crash leaves either the old file or the new one, never a truncated one. ``mode``: ``"w"`` or
    ``"wb"``. ``size``, the expected size in bytes of a large file, is checked against the free space
    first (:func:`require_space`). A full, read-only or forbidden place is reported as an
    :class:`~metrictransfer.errors.OutputLocationError` naming ``path``, also when ``write`` is a library
    that replaces the system's error with its own."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes with mode 'w' or 'wb', not {mode!r}")
    with staged_path(path, size=size) as tmp:
        raw = _WatchedFile(tmp, "w")
        try:
            buffered = io.BufferedWriter(raw)
            with buffered if mode == "wb" else io.TextIOWrapper(buffered, encoding="locale") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except Exception as err:
            if raw.failure is not None and raw.failure is not err:
                raise raw.failure from err  # the system's words (no space left), not the library's
            raise
        finally:
            raw.close()


def atomic_write_text(text: str, path: str | os.PathLike[str]) -> None:
    atomic_write(path, lambda f: f.write(text), "w")


def atomic_copy(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Copy ``source`` over ``path`` atomically (a fresh file: never shares an inode with ``source``),
    after checking there is room for it."""
    with open(source, "rb") as src:
        atomic_write(path, lambda f: shutil.copyfileobj(src, f, 1 << 20), "wb", size=os.fstat(src.fileno()).st_size)


@contextlib.contextmanager
def staged_path(path: str | os.PathLike[str], size: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` for a library that writes files itself (TorchScript, ONNX,
    faiss): the caller writes and checks it inside the ``with`` block; on a clean exit it replaces
    ``path``, on any error or interruption it is removed and ``path`` is untouched. ``path`` must be
    absent or a regular file (:func:`check_replaceable`); ``size``, the expected size in bytes of a large
    file, is checked against the free space first (:func:`require_space`). A library's own exception for
    a full disk is reported as a :class:`~metrictransfer.errors.StorageFaultError` naming ``path``."""
    path = Path(path)
    check_replaceable(path)
    make_parent(path)
    if size is not None:
        require_space(path, size)
    mode = 0o666 & ~current_umask()
    try:
        fd, tmp = _new_temporary(path, mode)
    except OSError as err:
        raise (output_error(err, path) if is_output_problem(err) else err) from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)  # a library may have made the file anew with its own mode (safetensors: 0600)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        check_replaceable(path)  # again: something may have appeared there while the file was written
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if is_output_problem(err):
            raise output_error(err, path) from None
        raise
    except Exception as err:
        failure = _failed_write(err, path)  # before the temporary goes: it holds the space that ran out
        tmp.unlink(missing_ok=True)
        if failure is not None:
            raise failure from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# What libraries say, without an errno, when a write of theirs came short (torch, faiss).
_SHORT_WRITE_WORDS = ("unexpected pos", "failed writing file", "file write failed", "write error")


def _failed_write(err: Exception, path: Path) -> OutputLocationError | None:
    """The one-line error for a library's exception that reports a failed write of ``path`` in its own
    words, recognised by the system's message inside them ("No space left on device"); None for any
    other exception, which keeps its traceback."""
    if isinstance(err, MetricTransferError):
        return None
    text = str(err)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
        if os.strerror(code) in text:
            return output_error(OSError(code, os.strerror(code)), path)
    if not any(words in text for words in _SHORT_WRITE_WORDS):
        return None
    with contextlib.suppress(OSError):  # torch says only "unexpected pos": is the disk full?
        if shutil.disk_usage(path.parent).free < SPACE_MARGIN_BYTES:
            return output_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), path)
    first = (text.strip().splitlines() or [type(err).__name__])[0]
    return StorageFaultError(f"cannot write {path}: the write failed ({first}); check the disk's free space and health, or write elsewhere")


def require_space(path: str | os.PathLike[str], nbytes: int) -> None:
    """Refuse to start writing about ``nbytes`` at ``path`` unless its file system has that much free plus
    a margin (a tenth, at least :data:`SPACE_MARGIN_BYTES`: estimates are rough, and the small files
    written after, logs and results, need room too). A full disk is then one line before the work of
    writing, instead of a failure half way through the file. The file being replaced stays until the new
    one is complete, so its size does not count as free."""
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:  # a file system that cannot tell: the write itself will
        return
    needed = nbytes + max(nbytes // 10, SPACE_MARGIN_BYTES)
    if free < needed:
        made = StorageFaultError(
            f"cannot write {path}: no space left on the device for it ({_megabytes(needed)} needed with a margin, "
            f"{_megabytes(free)} free); free some space or write elsewhere"
        )
        made.errno = errno.ENOSPC
        raise made


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 1e6:.1f} MB"


# Kinds of file that are never replaced, as stat tells them apart.
_NOT_REPLACED = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def check_replaceable(path: str | os.PathLike[str]) -> None:
    """Refuse ``path`` as the target of a write when it exists and is not a regular file (a FIFO, a
    device, a socket, a folder, or a symbolic link to one): renaming over it would destroy something
    metrictransfer did not write, such as the system's ``/dev/full``. Absent paths and links to nothing
    pass (the write creates the name)."""
    try:
        mode = os.stat(path).st_mode  # follows a symbolic link: judged by what it points to
    except OSError:  # absent, a link to nothing, or a folder on the way that is not one: the write reports it
        return
    if stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _NOT_REPLACED if test(mode)), "not a regular file")
    link = f"a symbolic link to {os.path.realpath(path)}, which is " if os.path.islink(path) else ""
    raise OutputLocationError(
        f"cannot write {path}: it is {link}{kind}, not a regular file, and is left as it is; "
        "choose another path (a new file, or a regular file to replace)"
    )


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
