"""The documentation site (docs/, mkdocs.yml) stays true: its Python examples run, its commands parse, the
files it names exist, its configuration reference is the schema's, and it builds with ``mkdocs build --strict``."""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from tests.helpers import broken_links

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", flags=re.S | re.M)


def _blocks(language: str) -> list[tuple[str, str]]:
    """(``page:line`` id, code) of every fenced block in that language, in page order."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group(1) == language:
                line = text.count("\n", 0, match.start()) + 2
                found.append((f"{page.relative_to(DOCS)}:{line}", match.group(2)))
    return found


PYTHON = _blocks("python")
SHELL = _blocks("bash")


# --------------------------------------------------------------------------------------- Python examples


def _registries() -> list[dict | set]:
    """timm's registry tables an example may add to (module-level dicts shared by the whole test session)."""
    import timm.models._registry as timm_registry

    return [v for k, v in vars(timm_registry).items() if not k.startswith("__") and isinstance(v, (dict, set))]


@pytest.fixture
def example_sandbox(tmp_path, tmp_path_factory, monkeypatch):
    """A fresh working directory, and the registries as they were once the example has run (an example
    that registers a loss or a backbone must not change what later tests see)."""
    from metrictransfer.registry import ALL

    monkeypatch.chdir(tmp_path)
    # the examples' tempfile.mkdtemp() folders (runs of a few hundred MB) go under pytest's own temporary
    # folder, which it prunes, not into /tmp, where every suite run left about 2 GB
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("example-tmp")))
    saved = [(table, _copy(table)) for table in _registries()]
    ours = [(registry, registry.snapshot()) for registry in ALL]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models, many small ops: one thread is as fast, and steady on a busy machine
    yield tmp_path
    torch.set_num_threads(threads)
    for table, before in saved:
        table.clear()
        table.update(before)
    for registry, snapshot in ours:
        registry.restore(snapshot)


def _copy(table: dict | set) -> dict | set:
    """The table and the sets, lists and dicts it holds copied; the objects they name are shared."""
    if isinstance(table, set):
        return set(table)
    return {key: copy.copy(value) if isinstance(value, (set, list, dict)) else value for key, value in table.items()}


def test_docs_have_python_examples():
    assert len(PYTHON) >= 10, [name for name, _ in PYTHON]


# Pages whose examples still write into the working directory (a reader's repository root); drop a page once
# its examples write to a temporary folder, as every other page's do.
WRITES_TO_WORKING_DIRECTORY: set[str] = set()


# An example that trains a model (train(...), api.train(...), a Trainer's fit) is slow: it runs in `make test`, not in the
# inner loop (`pytest -m "not slow"`).
TRAINS = re.compile(r"\btrain\((?!\))|\.fit\(|\b(?:distill|tune)\(")


@pytest.mark.parametrize(
    "name, code",
    [pytest.param(name, code, id=name, marks=[pytest.mark.slow] if TRAINS.search(code) else []) for name, code in PYTHON],
)
def test_docs_python_block_runs(name, code, example_sandbox, monkeypatch):
    # a fresh module, as a script's __main__ is (timm's @register_model looks the function's module up)
    script = types.ModuleType("docs_example")
    monkeypatch.setitem(sys.modules, script.__name__, script)
    exec(compile(code, f"docs/{name}", "exec"), script.__dict__)
    if name.partition(":")[0] not in WRITES_TO_WORKING_DIRECTORY:
        left = sorted(p.name for p in example_sandbox.iterdir())
        assert not left, f"{name} left {left} in the working directory: write to a temporary folder"


def test_extension_examples_leave_the_registries_as_they_were():
    from metrictransfer.registry import DATASETS, METHODS, METRIC_LOSSES, TRANSFER_LOSSES

    assert "similarity_matching" not in TRANSFER_LOSSES and "projected_cosine" not in TRANSFER_LOSSES
    assert "proxy_nca_pp" not in METRIC_LOSSES and "soft_triplet_cosine" not in METRIC_LOSSES
    assert "json_annotations" not in DATASETS and "center" not in METHODS
    import timm

    assert not timm.is_model("tiny_convnet")


# ------------------------------------------------------------------------------------- shell commands


def _commands() -> list[tuple[str, list[str]]]:
    """(block id, argv) of every command line in the docs' bash blocks (continuations joined, comments cut)."""
    found = []
    for name, code in SHELL:
        for line in code.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                found.append((name, argv))
    return found


COMMANDS = _commands()


def test_docs_metrictransfer_commands_parse():
    """Every ``metrictransfer ...`` line shown is accepted by the real argument parser (commands, options,
    choices), and the recipes it names exist."""
    from metrictransfer.cli import build_parser

    checked = 0
    for name, argv in COMMANDS:
        if argv[0].endswith("bin/metrictransfer") or argv[0] == "metrictransfer":
            args = argv[1:]
        elif "metrictransfer.cli" in argv:
            args = argv[argv.index("metrictransfer.cli") + 1 :]
        else:
            continue
        try:
            build_parser().parse_args(args)
        except SystemExit as stop:
            pytest.fail(f"{name}: `{shlex.join(argv)}` is not a valid command line (exit {stop.code})")
        for arg in args:
            if arg.startswith("recipes/") and arg.endswith(".yaml"):
                assert (ROOT / arg).is_file(), f"{name}: no recipe {arg}"
        checked += 1
    assert checked >= 30


def test_docs_commands_write_under_runs():
    """What a command writes (``--out``, ``--grid``) goes to a run folder under runs/ or to an absolute place,
    never into the repository root the commands are typed in."""
    wrong = []
    for name, argv in COMMANDS:
        for option, value in zip(argv, argv[1:]):
            if option in ("--out", "--grid") and not (value.startswith("runs/") or value.startswith("/")):
                wrong.append(f"{name}: `{shlex.join(argv)}` writes {value}")
    assert not wrong, wrong


def test_docs_make_targets_exist():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    shown = {argv[1] for _, argv in COMMANDS if argv[0] == "make" and len(argv) > 1}
    assert shown and shown <= targets, shown - targets


# --------------------------------------------------------------------------------- files the docs name

PATH = re.compile(r"(?<![\w./(-])((?:src/)?(?:metrictransfer|recipes|benchmarks|tests|examples|scripts)/[\w./-]*\w)")


def test_files_named_in_the_docs_exist():
    """Paths of the repository named in prose or commands (not in ``diff`` blocks, which show files to add)."""
    missing = []
    for page in PAGES:
        text = FENCE.sub(lambda m: "" if m.group(1) == "diff" else m.group(0), page.read_text())
        for path in set(PATH.findall(text)):
            if not Path(path).suffix:
                continue
            where = ROOT / path if not path.startswith("metrictransfer/") else ROOT / "src" / path
            if not where.exists():
                missing.append(f"{page.relative_to(DOCS)}: {path}")
    assert not missing, missing


def test_links_between_pages_resolve():
    """Every relative link of every page names a file that exists, and its #anchor a heading of that page
    (what ``mkdocs build --strict`` checks, without building the site)."""
    broken = [f"{page.relative_to(DOCS).parent}/{line}" for page in PAGES for line in broken_links(page)]
    assert not broken, broken


def test_every_benchmark_table_is_on_a_page():
    """Each table in benchmarks/results/ is included (pymdownx.snippets) by a page of the Benchmarks section."""
    included = set()
    for page in PAGES:
        included |= set(re.findall(r'^--8<-- "([^"]+)"', page.read_text(), flags=re.M))
    tables = {f"benchmarks/results/{p.name}" for p in (ROOT / "benchmarks" / "results").glob("*.md")}
    assert tables <= included, f"add a page in docs/benchmarks/ for {sorted(tables - included)}"
    assert all((ROOT / path).is_file() for path in included)


# ---------------------------------------------------------------------------- configuration reference


def _generator():
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_the_schemas():
    generator = _generator()
    text, _ = generator.render()
    assert generator.PAGE.read_text() == text, (
        "docs/reference/configuration.md differs from the schema: run .venv/bin/python scripts/config_reference.py"
    )


def test_configuration_reference_lists_every_key():
    """Catches a key of the run-wide sections, or of a method's own section, missing from the page."""
    from pydantic import BaseModel

    from metrictransfer.config import RunConfig
    from metrictransfer.registry import METHODS

    text = (DOCS / "reference" / "configuration.md").read_text()
    sections = {name: field.annotation for name, field in RunConfig.model_fields.items() if not field.exclude}
    sections |= {name: METHODS.get(name).params_model for name in METHODS.names() if METHODS.get(name).params_model}
    assert {"transfer", "mutual", "classifier", "selfsup"} <= set(sections)
    for name, section in sections.items():
        if isinstance(section, type) and issubclass(section, BaseModel):
            keys = [f"{name}.{key}" for key in section.model_fields]
        else:
            keys = [name]
        for key in keys:
            # a component ({name, params}) is a section of its own, its keys the rows
            assert f"| `{key}` |" in text or f"\n## {key}\n" in text, key


# --------------------------------------------------------------------------------------------- the site


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module.split(".")[0]) is None or importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    api = (tmp_path / "site" / "reference" / "api" / "index.html").read_text()
    assert 'id="metrictransfer.engine.trainer.train"' in api and ":class:" not in api
    for page in (tmp_path / "site").rglob("*.html"):  # offline: no fonts, scripts or styles from the network
        remote = re.findall(r'<(?:link|script)[^>]*(?:href|src)="(?:https?:)?//[^"]*"', page.read_text())
        assert not remote, (page, remote)
