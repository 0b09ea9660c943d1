"""Recipes and stored configurations of earlier layouts, read into the current one.

Every reader of an earlier layout lives here, applied to the raw mapping before it is validated, so the
sections themselves (:mod:`metrictransfer.config`, each method's own module) describe only the current
layout. Run folders and checkpoints written by earlier versions keep loading; a test holds one recipe of
each earlier layout (tests/test_config_migration.py).

Earlier layouts, oldest first:

- ``metric_loss.miner_params`` → ``metric_loss.miner.params``; ``transfer.sigma``, ``transfer.delta`` and
  ``transfer.params`` → ``transfer.loss.params``; ``mutual.params`` → ``mutual.loss.params``;
  ``classifier.sigma`` / ``delta`` / ``temperature`` → ``classifier.distill.params`` (the ones the chosen
  loss takes; the others were ignored then and are dropped).
- A plug-in method's settings under ``method_params``, now under the method's own name like a built-in's.
- Configurations stored before each method owned its section held every built-in method's section
  (``transfer``, ``selfsup``, ``classifier``, ``mutual``) and ``method_params``, whatever the method; the
  sections of the other methods held only defaults and are dropped.
"""

from __future__ import annotations

from typing import Any

#: The sections every configuration of the earlier layout stored, whatever its method.
EARLIER_BUILT_IN_SECTIONS = ("transfer", "selfsup", "classifier", "mutual")


def upgrade(raw: Any) -> Any:
    """``raw`` (a recipe or a stored configuration, as a mapping) in the current layout; anything else
    is returned as it is, for validation to refuse."""
    if not isinstance(raw, dict):
        return raw
    raw = dict(raw)
    method = raw.get("method", "source")
    if "method_params" in raw and all(key in raw for key in EARLIER_BUILT_IN_SECTIONS):  # stored before methods owned their sections
        for key in EARLIER_BUILT_IN_SECTIONS:
            if key != method:
                del raw[key]
    if "method_params" in raw:
        params = raw.pop("method_params")
        if params and isinstance(method, str) and method in raw:
            raise ValueError(f"give the settings of method {method!r} once: in its section {method}, not also in method_params")
        if params or method not in raw:
            raw[method] = params
        if not raw[method] and method not in EARLIER_BUILT_IN_SECTIONS:
            del raw[method]  # an empty method_params of a method without settings
    _in_section(raw, "metric_loss", lambda s: _moved(s, {"miner_params": "miner.params"}))
    _in_section(raw, "transfer", _transfer)
    _in_section(raw, "mutual", lambda s: _moved(s, {"params": "loss.params"}, {"loss": "rkd"}))
    _in_section(raw, "classifier", _classifier)
    return raw


def _in_section(raw: dict[str, Any], key: str, reader: Any) -> None:
    if isinstance(raw.get(key), dict):
        raw[key] = reader(raw[key])


def _transfer(section: dict[str, Any]) -> dict[str, Any]:
    return _moved(
        section, {"sigma": "loss.params.sigma", "delta": "loss.params.delta", "params": "loss.params"}, {"loss": "relaxed_contrastive"}
    )


def _classifier(section: dict[str, Any]) -> dict[str, Any]:
    distill = section.get("distill", "none")
    distill_name: Any = distill if isinstance(distill, str) else (distill or {}).get("name")
    kept = {"relaxed_contrastive": ("sigma", "delta"), "hinton": ("temperature",)}.get(distill_name, ())
    section = {k: v for k, v in section.items() if k not in {"sigma", "delta", "temperature"} - set(kept)}  # ignored before too
    return _moved(section, {key: f"distill.params.{key}" for key in kept})


def _moved(section: dict[str, Any], moves: dict[str, str], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Keys of the earlier layout moved to their new place (``old`` → ``new.path`` inside the section);
    ``defaults``: what a parent that the section leaves out stands for (a component's default name)."""
    if not any(old in section for old in moves):
        return section
    section = {**(defaults or {}), **section}
    for old, new in moves.items():
        if old in section:
            value = section.pop(old)
            *parents, last = new.split(".")
            node = section
            for part in parents:
                child = node.get(part)
                child = {"name": child} if isinstance(child, str) else dict(child or {})
                node[part] = child
                node = child
            node[last] = {**node.get(last, {}), **value} if isinstance(value, dict) and last == "params" else value
    return section
