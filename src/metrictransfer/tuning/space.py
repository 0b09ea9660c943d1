"""The search space of a study: a YAML file mapping dotted configuration keys to ranges.

    optim.lr: {type: log_uniform, low: 1.0e-4, high: 1.0e-2}
    transfer.params.sigma: {type: float, low: 0.5, high: 2.0}
    model.embedding_dim: {type: categorical, choices: [16, 32]}
    optim.epochs: {type: int, low: 2, high: 6}

Every key is checked against the recipe when the file is read, by building the recipe's configuration
with the key set to each end of its range (each choice), so a misspelt key or a value the schema refuses
is a one-line error naming the file and the key before any trial trains.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metrictransfer.config import build_config, read_yaml
from metrictransfer.errors import ConfigError, MissingFileError

if TYPE_CHECKING:
    import optuna

TYPES = ("float", "log_uniform", "int", "categorical")
# the fields each type takes: (required, optional)
FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "float": (("low", "high"), ("log", "step")),
    "log_uniform": (("low", "high"), ()),
    "int": (("low", "high"), ("log", "step")),
    "categorical": (("choices",), ()),
}
# Keys a study may not vary: the validation split is what trials are compared on.
FIXED_KEYS = ("data.validation",)
# PyYAML reads 1e-4 (no dot) as text; such a number is read as a number here.
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


@dataclass(frozen=True)
class Param:
    """One key of the space and its range: ``kind`` float or int (``low`` to ``high``, on a log scale
    when ``log``, in steps of ``step``), or categorical (``choices``)."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def values_to_check(self) -> list[Any]:
        """The values checked against the recipe's schema: both ends of a range, every choice."""
        return list(self.choices) if self.kind == "categorical" else [self.low, self.high]

    def describe(self) -> dict[str, Any]:
        """The range as plain data (study.json and the identity a resumed study must match)."""
        if self.kind == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        described: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high}
        if self.log:
            described["log"] = True
        if self.step is not None:
            described["step"] = self.step
        return described

    def suggest(self, trial: optuna.trial.Trial) -> Any:
        if self.kind == "categorical":
            with warnings.catch_warnings():  # Optuna stores list choices (as JSON) but warns about them
                warnings.filterwarnings("ignore", message="Choices for a categorical distribution should be")
                return trial.suggest_categorical(self.key, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def largest(self) -> float:
        """The largest value the key can take (numbers only)."""
        values = [v for v in self.values_to_check() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return max(values) if values else math.nan


@dataclass(frozen=True)
class SearchSpace:
    """The keys a study samples, in the file's order."""

    path: Path
    params: tuple[Param, ...] = field(default_factory=tuple)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def describe(self) -> dict[str, Any]:
        return {p.key: p.describe() for p in self.params}

    def suggest(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        """A value for every key, drawn by the study's sampler (Optuna's parameter names are the keys)."""
        return {p.key: p.suggest(trial) for p in self.params}

    def max_epochs(self, recipe_epochs: int) -> int:
        """The most epochs a trial can train (``optim.epochs`` may be one of the keys): K-fold pruning
        steps are counted in blocks of this many epochs per fold."""
        for p in self.params:
            if p.key == "optim.epochs" and not math.isnan(p.largest()):
                return max(1, int(p.largest()))
        return recipe_epochs


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a nested recipe dict, creating sections; a component written as a bare name
    (``loss: relaxed_contrastive``) becomes ``{name: ...}`` so that its ``params`` can be set."""
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, str):
            child = node[part] = {"name": child}
        elif not isinstance(child, dict):
            raise ConfigError(f"{key}: {part!r} holds the value {child!r}, not a section")
        node = child
    node[last] = value


def with_values(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the recipe ``raw`` with each dotted key of ``values`` set."""
    raw = copy.deepcopy(raw)
    for key, value in values.items():
        set_key(raw, key, value)
    return raw


def load_space(path: str | Path, recipe: dict[str, Any], recipe_name: str = "the recipe") -> SearchSpace:
    """Read and check a space file against the recipe (a nested dict, ``--set`` overrides applied)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"space file not found: {path}")
    raw = read_yaml(path, "a search space")
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"{path} must map dotted configuration keys to ranges, e.g. optim.lr: {{type: log_uniform, low: 1.0e-4, high: 1.0e-2}}"
        )
    params = tuple(_param(path, str(key), spec) for key, spec in raw.items())
    _check_keys(path, params)
    for param in params:
        for value in param.values_to_check():
            try:
                build_config(with_values(recipe, {param.key: value}), origin=f"{recipe_name} with {param.key}: {value!r}")
            except ConfigError as err:
                raise ConfigError(f"{path}: {param.key}: {err}") from None
    return SearchSpace(path, params)


def _param(path: Path, key: str, spec: Any) -> Param:
    where = f"{path}: {key}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a range such as {{type: float, low: 0.5, high: 2.0}}, got {spec!r}")
    kind = spec.get("type")
    if kind is None:
        raise ConfigError(f"{where}: missing type; one of {', '.join(TYPES)}")
    if kind not in TYPES:
        raise ConfigError(f"{where}: unknown type {kind!r}; one of {', '.join(TYPES)}")
    required, optional = FIELDS[kind]
    missing = [name for name in required if name not in spec]
    if missing:
        raise ConfigError(f"{where}: type {kind} needs {' and '.join(required)}; missing {', '.join(missing)}")
    unknown = sorted(set(spec) - {"type", *required, *optional})
    if unknown:
        allowed = ", ".join(("type", *required, *optional))
        raise ConfigError(f"{where}: unknown field {', '.join(map(str, unknown))} for type {kind}; allowed: {allowed}")
    if kind == "categorical":
        return _categorical(where, key, spec["choices"])
    return _range(where, key, kind, spec)


def _categorical(where: str, key: str, choices: Any) -> Param:
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: choices must be a non-empty list, got {choices!r}")
    read = tuple([_number_or_text(v) for v in c] if isinstance(c, list) else _number_or_text(c) for c in choices)
    for choice in read:
        values = choice if isinstance(choice, list) else [choice]  # a list choice is one value of a list key (mutual.update_every)
        if any(v is not None and not isinstance(v, (bool, int, float, str)) for v in values):
            raise ConfigError(f"{where}: choice {choice!r} is not a value or a list of values (numbers, text, true/false or null)")
    return Param(key, "categorical", choices=read)


def _range(where: str, key: str, kind: str, spec: dict[str, Any]) -> Param:
    integer = kind == "int"
    low, high = (_bound(where, name, spec[name], integer) for name in ("low", "high"))
    if low >= high:
        raise ConfigError(f"{where}: empty range: low {low} must be below high {high}")
    log = kind == "log_uniform" or spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got low {low}")
    step = spec.get("step")
    if step is not None:
        step = _bound(where, "step", step, integer)
        if step <= 0:
            raise ConfigError(f"{where}: step must be positive, got {step}")
        if log:
            raise ConfigError(f"{where}: step cannot be combined with a log range")
        if step > high - low:
            raise ConfigError(f"{where}: step {step} is larger than the range {low} to {high}")
    return Param(key, "int" if integer else "float", low=low, high=high, log=log, step=step)


def _bound(where: str, name: str, value: Any, integer: bool) -> float | int:
    value = _number_or_text(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {name} must be a number, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise ConfigError(f"{where}: {name} of an int range must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def _number_or_text(value: Any) -> Any:
    """``1e-4`` is a number here, though PyYAML (YAML 1.1) reads it as text."""
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        number = float(value)
        return int(number) if re.fullmatch(r"[-+]?\d+", value.strip()) else number
    return value


def _check_keys(path: Path, params: tuple[Param, ...]) -> None:
    keys = [p.key for p in params]
    for key in keys:
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{path}: {key!r} is not a dotted configuration key such as optim.lr")
        fixed = next((f for f in FIXED_KEYS if key == f or key.startswith(f + ".")), None)
        if fixed is not None:
            raise ConfigError(
                f"{path}: {key}: trials are compared on {fixed}, so a study cannot vary it; set it in the recipe (or with --set)"
            )
        inside = [other for other in keys if other.startswith(key + ".")]
        if inside:
            raise ConfigError(f"{path}: {key} holds {inside[0]}, which the space also sets; give one of them")
