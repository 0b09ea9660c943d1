"""Keyword parameters of losses and miners checked against their signatures when a config is loaded.

Without this, ``margin: abc`` or a misspelt parameter is accepted by the constructor and fails at the
first training step, minutes (or a queue wait) later, in a traceback from deep inside the loss.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from metrictransfer.errors import ConfigError


def check_params(builder: Callable[..., Any], params: dict[str, Any], what: str, where: str, filled: tuple[str, ...] = ()) -> None:
    """Raise :class:`ConfigError` naming ``what`` (e.g. "metric loss 'triplet'") and the key ``where.KEY``
    for an unknown parameter, one that metrictransfer fills itself (``filled``), or a value whose type
    differs from its default's (a number for a number, true/false for a flag, text for text)."""
    accepted, open_ended = _accepted(builder)
    accepted = {name: p for name, p in accepted.items() if name not in filled}
    for key, value in params.items():
        if key in filled:
            raise ConfigError(f"{what}: {where}.{key} is set by metrictransfer from the data and model; remove it")
        if key not in accepted:
            if open_ended:
                continue
            allowed = ", ".join(accepted) or "none"
            raise ConfigError(f"{what}: unexpected keyword argument {key!r} ({where}.{key}); its parameters: {allowed}")
        expected = _expected_type(accepted[key].default)
        if expected is not None and not _is_a(value, expected):
            hint = " (YAML reads 1e-3 as text: write 1.0e-3)" if expected == "a number" and _numeric_text(value) else ""
            raise ConfigError(f"{what}: {where}.{key} expects {expected}, got {value!r}{hint}")


def _accepted(builder: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], bool]:
    """The keyword parameters ``builder`` takes; for a class whose ``__init__`` passes ``**kwargs`` on, its
    bases' parameters too (pytorch-metric-learning's losses take ``reducer``, ``distance``, ... that way), so
    that a misspelt key is still caught. True when some ``**kwargs`` remains open (anything goes)."""
    inits = [vars(k)["__init__"] for k in builder.__mro__ if "__init__" in vars(k)] if inspect.isclass(builder) else [builder]
    accepted: dict[str, inspect.Parameter] = {}
    for init in inits:
        if getattr(init, "__module__", "").startswith(("torch.", "builtins")) or init is object.__init__:
            return accepted, False  # nn.Module and object take no keywords of a loss
        parameters = inspect.signature(init).parameters
        for name, p in parameters.items():
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name != "self":
                accepted.setdefault(name, p)
        if not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            return accepted, False
    return accepted, True


def _expected_type(default: Any) -> str | None:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, (int, float)):
        return "a number"
    if isinstance(default, str):
        return "text"
    return None  # no default, or None: nothing to compare with


def _is_a(value: Any, expected: str) -> bool:
    if expected == "true or false":
        return isinstance(value, bool)
    if expected == "a number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, str)


def _numeric_text(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return isinstance(value, str)
