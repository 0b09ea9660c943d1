"""Write docs/reference/configuration.md from the configuration schema (metrictransfer.config.RunConfig).

Every key of a recipe, with its type (and the range pydantic enforces), its default and the
``Field(description=...)`` of the schema; each registered method's own section (the ``params_model`` its
class declares, in its own module) after ``metric_loss``. The page is committed; tests/test_docs.py checks that it
equals this script's output, so it cannot drift from the code.

    .venv/bin/python scripts/config_reference.py           # rewrite the page
    .venv/bin/python scripts/config_reference.py --check   # exit 1 if the committed page differs
    .venv/bin/python scripts/config_reference.py --missing # list the keys without a description
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
import typing
from pathlib import Path

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reference" / "configuration.md"

# A sentence above each section's table: where the section is used and which guide explains it.
INTROS = {
    "": "Keys at the top level of a recipe.",
    "checkpoint": "When checkpoints are written and how many are kept "
    "([Multi-GPU and long runs](../guides/long-runs.md#checkpoints-signals-resume)).",
    "logging": "Extra logs beside `log.csv`, which is always written.",
    "data": "Which images, how they are split, batched and augmented ([Datasets](../guides/datasets.md)).",
    "model": "The embedding model: a timm backbone, global average + global max pooling, a linear head "
    "([A backbone](../extending/backbone.md)).",
    "metric_loss": "The loss on labels (`method: source`, `transfer.metric_weight`, the members of `method: mutual`) "
    "([A metric loss](../extending/metric-loss.md)).",
    "transfer": "`method: transfer`: the frozen source and the transfer loss ([Embedding transfer](../guides/transfer.md)).",
    "transfer.terms[]": "Each entry of `transfer.terms`: one term of a weighted sum of transfer losses.",
    "selfsup": "`method: selfsup`: NT-Xent between the views of each image, no labels.",
    "classifier": "`method: classifier`: cross-entropy on the training classes, optionally taught by a source "
    "classifier; accuracy on `data.holdout_images`.",
    "mutual": "`method: mutual`: a cohort of models that teach each other ([Mutual learning](../guides/mutual-learning.md)).",
    "optim": "Optimiser and learning-rate schedule (cosine: per step).",
    "eval": "Retrieval metrics on the test split ([Evaluation](../guides/evaluation.md)).",
}


def registries() -> dict[str, list[str]]:
    """Keys whose value is a name checked against a registry of the code (their validators use these)."""
    from metrictransfer.normalization import NORMALIZATIONS
    from metrictransfer.registry import DATASETS, METHODS, METRIC_LOSSES, MINERS, TRANSFER_LOSSES, TRANSFORMS

    return {
        "method": METHODS.names(),
        "data.dataset": DATASETS.names(),
        "data.transform": TRANSFORMS.names(),
        "data.normalization": [*sorted(NORMALIZATIONS), "model"],
        "metric_loss.name": METRIC_LOSSES.names(),
        "metric_loss.miner.name": MINERS.names(),
        "transfer.loss.name": TRANSFER_LOSSES.names(),
        "transfer.terms[].name": TRANSFER_LOSSES.names(),
        "classifier.distill.name": ["none", *TRANSFER_LOSSES.names()],
        "mutual.loss.name": TRANSFER_LOSSES.names(),
    }


def _model_in(annotation) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (``Model``, ``Model | None``, ``list[Model]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def type_name(annotation) -> str:
    """``str | None``, ``list[int]``, ``one of: a, b`` ... as a reader of a YAML recipe needs it."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    if origin is typing.Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def bounds(field: FieldInfo) -> str:
    """The numeric range the schema enforces, e.g. ``≥ 1`` or ``> 0, < 1``."""
    signs = {
        annotated_types.Ge: ("≥", "ge"),
        annotated_types.Gt: (">", "gt"),
        annotated_types.Le: ("≤", "le"),
        annotated_types.Lt: ("<", "lt"),
    }
    parts = []
    for item in field.metadata:
        for kind, (sign, attribute) in signs.items():
            if isinstance(item, kind):
                parts.append(f"{sign} {getattr(item, attribute)}")
    return ", ".join(parts)


def default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return f"`{json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value}`"


def _anchor(heading: str) -> str:
    """The id mkdocs' toc extension gives a heading (lower case, word characters, hyphens)."""
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def sections(model: type[BaseModel], prefix: str = "") -> list[tuple[str, list[tuple[str, FieldInfo]], list[str]]]:
    """(section name, its plain keys, its nested sections' names), depth first, in the schema's order."""
    plain, nested, below = [], [], []
    for name, field in model.model_fields.items():
        if field.exclude:  # stored for the code, never written by a user (the method's section)
            continue
        inner = _model_in(field.annotation)
        key = f"{prefix}{name}"
        if inner is None:
            plain.append((key, field))
        elif typing.get_origin(field.annotation) is list:
            plain.append((key, field))
            below.append((f"{key}[]", inner))
        elif prefix and inner is model_of_data():  # eval.data: a whole data block, described once
            plain.append((key, field))
            nested.append(key)
        else:
            below.append((key, inner))
    found = [(prefix.rstrip("."), plain, nested)]
    for key, inner in below:
        found += sections(inner, f"{key}.")
    return found


def method_sections() -> list[tuple[str, list[tuple[str, FieldInfo]], list[str]]]:
    """The section of every registered method that declares settings, named after it, in name order."""
    from metrictransfer.registry import METHODS

    found = []
    for name in METHODS.names():
        model = getattr(METHODS.get(name), "params_model", None)
        if model is not None:
            found += sections(model, f"{name}.")
            if name not in INTROS and model.__doc__:
                INTROS[name] = f"`method: {name}`: " + " ".join(model.__doc__.split("\n\n")[0].split())
    return found


def model_of_data() -> type[BaseModel]:
    from metrictransfer.config import DataConfig

    return DataConfig


def render() -> tuple[str, list[str]]:
    """The page's text and the keys that have no description."""
    from metrictransfer.config import RESUMABLE_KEYS, RunConfig

    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/config_reference.py from metrictransfer.config.RunConfig: do not edit by hand. -->",
        "",
        "Every key a recipe may set, with its type, default and meaning. Nested keys are written with dots "
        "in `--set` (`--set optim.lr=3e-4`) and as nested mappings in YAML. An unknown key, a value of the "
        "wrong type or out of range, or an unknown name is an error that names the key and lists what is allowed.",
        "",
        "The method's own settings are the section named after it (`transfer`, `mutual`, ...: the model its "
        "class declares, in its own module); a section of another method than the run's is an error. Recipes "
        "and run folders of earlier layouts are read into this one (`metrictransfer.config_migration`).",
        "",
        "A resumed run (`metrictransfer train --resume RUN`) may change only the keys that say how it runs, "
        f"not what it computes: {', '.join(f'`{k}`' for k in RESUMABLE_KEYS)}.",
        "",
    ]
    missing = []
    found = sections(RunConfig)
    at = 1 + max(i for i, (name, _, _) in enumerate(found) if name.split(".")[0] == "metric_loss")
    found[at:at] = method_sections()
    subsections = {name for name, _, _ in found}
    for name, keys, nested in found:
        title = name or "Top level"
        lines += [f"## {title}", ""]
        if INTROS.get(name):
            lines += [INTROS[name], ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        names = registries()
        for key, field in keys:
            kind = type_name(field.annotation)
            if key in names:
                kind += ": one of " + ", ".join(names[key])
            limit = bounds(field)
            description = field.description or ""
            if not description:
                missing.append(key)
            if key in nested:
                description = (description + "; " if description else "") + "a mapping with the keys of [data](#data)"
            elif f"{key}[]" in subsections:
                description = (description + "; " if description else "") + f"each entry has the keys of [{key}[]](#{_anchor(key + '[]')})"
            lines.append(
                f"| `{key}` | {_cell(kind)}{', ' + limit if limit else ''} | {_cell(default_text(field))} | {_cell(description)} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n", missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed page differs from the schema")
    parser.add_argument("--missing", action="store_true", help="list the keys that have no description")
    args = parser.parse_args(argv)
    text, missing = render()
    if args.missing:
        print("\n".join(missing))
        return 0
    if args.check:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)} ({len(missing)} keys without a description)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
