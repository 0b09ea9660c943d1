"""metrictransfer: deep metric learning with knowledge transfer between embedding models."""

from typing import Any


def __getattr__(name: str) -> Any:
    """``__version__`` is read from the installed metadata on first use: importlib.metadata costs about a
    third of the command line's start-up, and ``--help`` does not need it."""
    if name != "__version__":
        raise AttributeError(f"module 'metrictransfer' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        value = version("metrictransfer")
    except PackageNotFoundError:  # run from a source tree that was not installed
        value = "0.0.0+unknown"
    globals()["__version__"] = value
    return value
