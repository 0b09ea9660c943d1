"""The packages of src/metrictransfer form layers, and import each other without cycles.

The layer table (layer, packages, what they hold; lowest first) is in docs/architecture.md, under "The
layers", with the rules it states: a module imports, at module level, only modules of its own layer or of
lower ones, and the packages of a layer import each other without cycles. A function-level import of a
metrictransfer module only defers a heavy dependency (``FUNCTION_LEVEL`` below says which and why); it
follows the layers too, so none hides a cycle. ``if TYPE_CHECKING:`` imports do not count. These tests read
the table from that page, so the page and the code cannot disagree; the page's picture must list the same
layers and packages. scripts/import_graph.py prints the graph these tests check (``--all`` with
function-level imports).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _graph_module():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


graph = _graph_module()

# Module-level imports that go up a layer, by (importing module, imported package): each names the change that removes it.
UPWARD: dict[tuple[str, str], str] = {}

# Function-level imports of metrictransfer modules, by importing module and imported module ("*": any), with why.
FUNCTION_LEVEL = {
    "metrictransfer.api": {
        "*": "each function imports what it runs: the package names the API without loading torch",
    },
    "metrictransfer.cli": {
        "*": "each command imports what it runs: --help, usage and configuration errors answer without loading torch",
    },
    "metrictransfer.cli.commands": {
        "*": "each command imports what it runs: --help, usage and configuration errors answer without loading torch",
    },
    "metrictransfer.cli.parser": {
        "*": "the options' defaults are read where they are built (distill's, without pydantic)",
    },
    "metrictransfer.data.inspect": {
        "metrictransfer.data.glyphs": "defers torch and matplotlib: inspecting a folder of files reads annotation files only",
    },
    "metrictransfer.data.registry": {
        "metrictransfer.data.glyphs": "defers torch and matplotlib to building a glyphs split",
        "metrictransfer.data.images": "defers torch to building a split of files: reading annotation files needs none",
    },
    "metrictransfer.retrieval.serve": {
        "metrictransfer.data.transforms": "defers torch and torchvision to a service that embeds with the run's PyTorch model",
    },
    "metrictransfer.distillation": {
        "metrictransfer.config": "defers pydantic: the command line reads distill's defaults to build --help",
    },
    "metrictransfer.evaluation.measure": {
        "metrictransfer.evaluation.evaluate": "defers torchvision (seconds to import) to a run's model: evaluate --embeddings needs none",
        "metrictransfer.runtime.checkpoint": "defers timm and torchvision to a run's model: evaluate --embeddings needs none",
    },
    "metrictransfer.evaluation.knn": {
        "metrictransfer.evaluation.fold_kernel": "defers numba (about 1 s to load) to evaluations large enough to use its kernel",
    },
    "metrictransfer.evaluation.screened": {
        "metrictransfer.evaluation.screen_kernel": "defers numba (about 1 s to load) to evaluations large enough to be screened",
    },
    "metrictransfer.retrieval": {
        "metrictransfer.retrieval.build": "defers torch: searching an index (search, serve) loads none",
        "metrictransfer.runtime.checkpoint": "defers torch: searching an index (search, serve) loads none",
    },
    "metrictransfer.retrieval.gallery": {
        "metrictransfer.retrieval.checkpoint_model": "defers torch to indexes without an exported model, or search --checkpoint",
    },
    "metrictransfer.retrieval.grid": {
        "metrictransfer.engine.logging": "defers matplotlib (engine.logging loads it, with the Agg backend) to drawing a grid",
    },
}

PAGE = ROOT / "docs" / "architecture.md"
HEADER = "| layer | packages | what they hold |"
PICTURE_LAYER = re.compile(r'<g class="layer" data-layer="(\w+)">.*?<text class="packages"[^>]*>([^<]*)</text>')


def _layer_section() -> str:
    """The layer table of docs/architecture.md: its header row and every row after it."""
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    assert HEADER in lines, f"docs/architecture.md has no layer table (a row {HEADER!r} and its rows)"
    rows = lines[lines.index(HEADER) :]
    return "\n".join(rows[: next((i for i, line in enumerate(rows) if not line.startswith("|")), len(rows))])


def _rows() -> list[tuple[str, list[str]]]:
    """(layer, packages) per row of the table, lowest first; a package is a `name` in the second column."""
    rows = []
    for line in _layer_section().splitlines()[2:]:  # past the header and the |---| line
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 3 and cells[0], f"docs/architecture.md: a layer row has three cells, got {line!r}"
        packages = re.findall(r"`(\w+)`", cells[1])
        assert packages, f"docs/architecture.md: layer {cells[0]!r} lists no `package`"
        rows.append((cells[0], packages))
    return rows


def _layers() -> dict[str, tuple[int, str]]:
    """package → (rank, layer name), from the table in docs/architecture.md."""
    rows = _rows()
    assert len(rows) >= 5, f"cannot read the layer table of docs/architecture.md:\n{_layer_section()}"
    listed = [package for _, packages in rows for package in packages]
    twice = sorted({p for p in listed if listed.count(p) > 1})
    assert not twice, f"docs/architecture.md lists packages in more than one layer: {twice}"
    return {package: (rank, layer) for rank, (layer, packages) in enumerate(rows) for package in packages}


LAYERS = _layers()
IMPORTS = graph.all_imports()


def _layer(module: str) -> tuple[int, str]:
    return LAYERS[graph.package_of(module)]


def _where(imp) -> str:
    return f"{imp.file}:{imp.line} imports {imp.target}"


def _crossing(imp) -> str:
    (a, la), (b, lb) = _layer(imp.source), _layer(imp.target)
    return f"{_where(imp)}: layer {la} ({a + 1}) -> {lb} ({b + 1})"


def _fail(problems: list[str], what: str) -> str:
    return f"{what}:\n  " + "\n  ".join(problems) + f"\n\nthe layer table of docs/architecture.md:\n{_layer_section()}"


def test_every_package_has_a_layer():
    packages = {graph.package_of(m) for m in graph.modules()}
    assert packages - LAYERS.keys() == set(), _fail(sorted(packages - LAYERS.keys()), "packages the layer table lacks")
    assert LAYERS.keys() - packages == set(), _fail(sorted(LAYERS.keys() - packages), "packages in the table that do not exist")


def test_the_picture_shows_the_table():
    """The page's picture (an SVG written by hand) names the table's layers, highest first, and their packages."""
    drawn = [(layer, packages.split()) for layer, packages in PICTURE_LAYER.findall(PAGE.read_text(encoding="utf-8"))]
    table = list(reversed(_rows()))
    assert drawn == table, f"the picture of docs/architecture.md shows {drawn}; its table says {table}"


def test_module_level_imports_go_down_the_layers():
    upward = [
        imp
        for imp in IMPORTS
        if not imp.function_level
        and _layer(imp.target)[0] > _layer(imp.source)[0]
        and (imp.source, graph.package_of(imp.target)) not in UPWARD
    ]
    assert not upward, _fail([_crossing(imp) for imp in upward], "imports of a higher layer")


def test_packages_import_each_other_without_cycles():
    """Function-level imports count here: a cycle is a cycle whenever its imports run."""
    kept = [imp for imp in IMPORTS if (imp.source, graph.package_of(imp.target)) not in UPWARD]
    edges = graph.package_edges(kept)
    found = graph.cycles(edges)
    lines = [" -> ".join(cycle) + "  (" + "; ".join(_where(edges[a, b][0]) for a, b in zip(cycle, cycle[1:])) + ")" for cycle in found]
    assert not found, _fail(lines, "package import cycles")


def test_modules_import_each_other_without_cycles():
    edges = {(imp.source, imp.target) for imp in IMPORTS if not imp.function_level and imp.source != imp.target}
    assert graph.cycles(edges) == [], _fail([" -> ".join(c) for c in graph.cycles(edges)], "module import cycles")


def test_function_level_imports_only_defer_heavy_dependencies():
    problems = []
    for imp in (imp for imp in IMPORTS if imp.function_level):
        allowed = FUNCTION_LEVEL.get(imp.source, {})
        if "*" not in allowed and imp.target not in allowed:
            problems.append(
                f"{_where(imp)} inside a function: import it at module level, or add it to FUNCTION_LEVEL "
                "with the heavy dependency it defers"
            )
        elif _layer(imp.target)[0] > _layer(imp.source)[0]:
            problems.append(f"{_crossing(imp)}, inside a function (it hides a cycle)")
    assert not problems, _fail(problems, "function-level imports")


@pytest.mark.parametrize("table", ["UPWARD", "FUNCTION_LEVEL"])
def test_exceptions_are_still_needed(table):
    """An exception whose import is gone is deleted (the registry change deletes the config entries)."""
    if table == "UPWARD":
        found = {(imp.source, graph.package_of(imp.target)) for imp in IMPORTS if not imp.function_level}
        stale = [f"{a} -> {b}" for a, b in UPWARD if (a, b) not in found]
    else:
        found = {(imp.source, imp.target) for imp in IMPORTS if imp.function_level}
        stale = [
            f"{a} -> {b}"
            for a, targets in FUNCTION_LEVEL.items()
            for b in targets
            if (a, b) not in found and not (b == "*" and any(s == a for s, _ in found))
        ]
    assert not stale, f"delete these entries of {table} in tests/test_layers.py, their imports are gone: {stale}"
