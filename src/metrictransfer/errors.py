"""The failures a user can cause and fix: bad configuration, data, checkpoints, indexes, output places.

Every one is a :class:`MetricTransferError`, whose message is one line naming the file, key or value
and what to do; the command line prints it without a traceback and exits with status 2 (bad input),
or 1 for a fault of the machine (:class:`StorageFaultError`: a full disk; a diverged training). Anything
else that escapes is a bug in metrictransfer and keeps its traceback.

Each class also derives from the built-in exception that Python code would have caught before this
hierarchy existed (``ValueError``, ``FileNotFoundError``, ...), so a library user's ``except`` keeps
working.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar


class MetricTransferError(Exception):
    """An expected failure: the message says what is wrong and what to do."""

    exit_status = 2


class ConfigError(MetricTransferError, ValueError):
    """A configuration (recipe, ``--set``, command-line option) that cannot be used."""


class DataError(MetricTransferError, ValueError):
    """A dataset whose files are malformed, leak between splits, or do not match what they claim to be."""


class BadImageError(DataError):
    """An image file that cannot be decoded faithfully; the message names the file."""


class MissingFileError(MetricTransferError, FileNotFoundError):
    """A file or folder the user named (or that a run needs) does not exist."""


class CheckpointError(MetricTransferError, ValueError):
    """A checkpoint that cannot be used here (another format or version, another kind of file)."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint whose bytes are not the ones written: zero bytes, truncated, or failing its checksum."""


class SearchIndexError(MetricTransferError, ValueError):
    """A search index whose files do not belong together or to the model searching them."""


class OutputLocationError(MetricTransferError, OSError):
    """A place we cannot write to: full, read-only, not a folder, or holding something we must not replace."""


class StorageFaultError(OutputLocationError):
    """The disk failed a write: full, over quota, or an I/O error. Exit status 1, not 2: the input was
    fine and the same command succeeds once there is room (a script may retry it, not fix its input)."""

    exit_status = 1


class RunExistsError(OutputLocationError):
    """``--out`` already holds a run."""


class RunLockedError(OutputLocationError):
    """Another process is training into the same run folder."""


class MissingPackageError(MetricTransferError, ImportError):
    """An optional package a feature needs is not installed; the message says how to install it."""


class TrainingDivergedError(MetricTransferError, FloatingPointError):
    """The loss became non-finite; the last good checkpoint is kept."""

    exit_status = 1


#: The running command's own options for recipe keys (see :func:`command_options`).
_OPTIONS: ContextVar[Mapping[str, str] | None] = ContextVar("metrictransfer_command_options", default=None)


@contextmanager
def command_options(options: Mapping[str, str]) -> Iterator[None]:
    """Within it, messages name the recipe keys of ``options`` by the command's option for each
    (``metrictransfer distill`` builds its recipe from ``--source-weights``, ``--batch-size``, ...), so that
    a message names what the user typed, not a key of a recipe they never wrote."""
    token = _OPTIONS.set(options)
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def setting(key: str, value: object, sep: str = "=") -> str:
    """``key`` set to ``value`` as a message says it: the running command's option (``--batch-size 48``)
    when it has one for the key (:func:`command_options`), else the recipe key (``data.classes_per_batch=48``)."""
    option = command_option(key)
    return f"{option} {value}" if option else f"{key}{sep}{value}"


def command_option(key: str) -> str | None:
    """The running command's option for ``key`` (a recipe key, or a parameter of a library function) when
    :func:`command_options` names one, else None (Python code, or a key the command sets no option for)."""
    return (_OPTIONS.get() or {}).get(key)


# errno values that mean "this place cannot take the file", not "metrictransfer has a bug".
_OUTPUT_ERRNOS = {
    errno.ENOSPC: "no space left on the device (the disk is full)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EIO: "the device reported an input/output error",
}
# Of those, the ones that are a fault of the machine rather than of the place the user chose.
_STORAGE_FAULTS = {errno.ENOSPC, errno.EDQUOT, errno.EIO}


def is_output_problem(err: OSError) -> bool:
    """Whether an OSError says the place is unwritable (full, read-only, no permission), not a bug."""
    return err.errno in _OUTPUT_ERRNOS


def output_error(err: OSError, path: str | os.PathLike[str] | None = None, verb: str = "write") -> OutputLocationError:
    """One line for an OSError of writing (``verb``) ``path``: what happened in words, and what to do."""
    where = path if path is not None else (err.filename or "the output")
    reason = _OUTPUT_ERRNOS.get(err.errno or 0, err.strerror or str(err))
    advice = {
        errno.ENOSPC: "free some space or write elsewhere",
        errno.EDQUOT: "free some space or write elsewhere",
        errno.EROFS: "write elsewhere",
        errno.EACCES: "write elsewhere or fix the folder's permissions",
        errno.EPERM: "write elsewhere or fix the folder's permissions",
        errno.EIO: "check the disk (the system log names the fault) or write elsewhere",
    }.get(err.errno or 0, "choose another path")
    kind = StorageFaultError if err.errno in _STORAGE_FAULTS else OutputLocationError
    made = kind(f"cannot {verb} {where}: {reason}; {advice}")
    made.errno = err.errno
    return made
