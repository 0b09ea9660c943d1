"""Component registries: a loss, method or dataset is registered where it is defined.

A component module says ``@register_transfer_loss("rkd")`` above its class; nothing else names it. Each
registry knows the package that holds its built-in components and imports that package's modules the first
time a name is looked up, so a new file in ``metrictransfer/losses/`` is found without editing an index,
and so this module (imported by the configuration) stays free of torch. Components outside the package
register by being imported (a user's own module) or through the entry-point group ``metrictransfer.<kind>``.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from metrictransfer.errors import ConfigError

T = TypeVar("T")


@dataclass
class Entry(Generic[T]):
    """A registered component and what its registration said about it (``info``)."""

    name: str
    component: T
    info: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Names → components of one kind, filled by decorators in the modules of ``package``."""

    def __init__(self, kind: str, package: str | None, group: str, decorator: str) -> None:
        self.kind = kind
        self.package = package
        self.group = group
        self.decorator = decorator
        self._entries: dict[str, Entry[T]] = {}
        self._discovered = False
        self._declared_cache: list[str] | None = None

    def register(self, name: str, **info: Any) -> Callable[[T], T]:
        """Decorator: register the decorated class or function under ``name``; ``info`` is kept with it."""

        def decorate(component: T) -> T:
            known = self._entries.get(name)
            if known is not None and known.component is not component and _qualname(known.component) != _qualname(component):
                raise ValueError(
                    f"{self.kind} {name!r} is already registered by {_qualname(known.component)}; {_qualname(component)} needs another name"
                )
            self._entries[name] = Entry(name, component, dict(info))
            return component

        return decorate

    def _discover(self) -> None:
        if self._discovered:
            return
        if self.package is not None:
            package = importlib.import_module(self.package)
            for module in pkgutil.iter_modules(package.__path__, f"{self.package}."):
                # only the modules that register one: the others may import torch, which reading a
                # dataset's annotation files (data inspect) does without
                spec = importlib.util.find_spec(module.name)
                source = Path(spec.origin) if spec and spec.origin else None
                if source is None or source.suffix != ".py" or f"{self.decorator}(" in source.read_text(encoding="utf-8"):
                    importlib.import_module(module.name)
        from importlib.metadata import entry_points  # here, not at the top: it costs the command line's --help 40 ms

        for point in entry_points(group=self.group):  # plug-ins installed as packages
            point.load()
        self._discovered = True  # only once all loaded: a plug-in that fails to import fails every lookup, not just the first

    def declared_names(self) -> list[str]:
        """The built-in names, read from the package's source (``register_x("name")`` calls) without
        importing it: what the command line's help lists while staying free of torch. Plug-ins are known
        only once imported (:meth:`names`); a test keeps the two equal for the package itself."""
        spec = importlib.util.find_spec(self.package) if self.package else None
        found: set[str] = set()
        for folder in (spec.submodule_search_locations or []) if spec else []:
            for path in sorted(Path(folder).glob("*.py")):
                # a text search for calls that begin a line (docstrings quote them inside a sentence), not a
                # parse: reading a run's configuration checks names this way, in milliseconds
                pattern = rf"^[ \t]*@?{re.escape(self.decorator)}\(\s*([\"'])([^\"']+)\1"
                called = re.finditer(pattern, path.read_text(encoding="utf-8"), re.MULTILINE)
                found.update(match.group(2) for match in called)
        return sorted(found)

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        if name in self._entries or (not self._discovered and name in self._declared()):
            return True  # a built-in, known without importing its module (and torch with it)
        self._discover()
        return name in self._entries

    def _declared(self) -> list[str]:
        if self._declared_cache is None:
            self._declared_cache = self.declared_names()
        return self._declared_cache

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __setitem__(self, name: str, component: T) -> None:
        """Replace or add a component, keeping what its registration said (tests swap in instrumented ones)."""
        self._discover()
        known = self._entries.get(name)
        self._entries[name] = Entry(name, component, dict(known.info) if known else {})

    def __delitem__(self, name: str) -> None:
        self._discover()
        del self._entries[name]

    def entry(self, name: str, where: str | None = None) -> Entry[T]:
        """The entry of ``name``, or a :class:`ConfigError` listing the valid names (``where``: the key)."""
        self._discover()
        if name not in self._entries:
            at = f" ({where})" if where else ""
            raise ConfigError(f"unknown {self.kind} {name!r}{at}; valid names: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def snapshot(self) -> dict[str, Entry[T]]:
        """The entries as they are now, for :meth:`restore` (tests that register something take it back)."""
        self._discover()
        return dict(self._entries)

    def restore(self, snapshot: dict[str, Entry[T]]) -> None:
        self._entries = dict(snapshot)

    def get(self, name: str, where: str | None = None) -> T:
        return self.entry(name, where).component

    def info(self, name: str, key: str, default: Any = None) -> Any:
        return self.entry(name).info.get(key, default)


def _qualname(component: Any) -> str:
    return f"{getattr(component, '__module__', '?')}.{getattr(component, '__qualname__', repr(component))}"


TRANSFER_LOSSES: Registry[Any] = Registry(
    "transfer loss", "metrictransfer.losses", "metrictransfer.transfer_losses", "register_transfer_loss"
)
METRIC_LOSSES: Registry[Any] = Registry("metric loss", "metrictransfer.losses", "metrictransfer.metric_losses", "register_metric_loss")
MINERS: Registry[Any] = Registry("miner", "metrictransfer.losses", "metrictransfer.miners", "register_miner")
METHODS: Registry[Any] = Registry("method", "metrictransfer.methods", "metrictransfer.methods", "register_method")
DATASETS: Registry[Any] = Registry("dataset", "metrictransfer.data", "metrictransfer.datasets", "register_dataset")
TRANSFORMS: Registry[Any] = Registry("transform", "metrictransfer.data", "metrictransfer.transforms", "register_transform")
ALL: tuple[Registry[Any], ...] = ()  # filled below

#: Backbones written here (registered with timm too); any other timm name works as well.
BACKBONES: Registry[Any] = Registry("backbone", "metrictransfer.models", "metrictransfer.backbones", "register_backbone")
#: Retrieval metrics computed from each query's neighbour statistics (``QueryStats``): one function each,
#: ``at_k=True`` for those asked at several K (``recall@1``, ``recall@2``, ...).
RETRIEVAL_METRICS: Registry[Any] = Registry(
    "retrieval metric", "metrictransfer.evaluation", "metrictransfer.retrieval_metrics", "register_retrieval_metric"
)

ALL = (TRANSFER_LOSSES, METRIC_LOSSES, MINERS, METHODS, DATASETS, TRANSFORMS, BACKBONES)

register_transfer_loss = TRANSFER_LOSSES.register
register_metric_loss = METRIC_LOSSES.register
register_miner = MINERS.register
register_method = METHODS.register
register_dataset = DATASETS.register
register_transform = TRANSFORMS.register
register_backbone = BACKBONES.register
register_retrieval_metric = RETRIEVAL_METRICS.register
