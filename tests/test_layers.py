"""The packages of src/metrictransfer form layers, and import each other without cycles.

Layers
------
Lowest first. A module imports, at module level, only modules of its own layer or of lower ones, and
the packages of a layer import each other without cycles. A function-level import of a metrictransfer
module only defers a heavy dependency (``FUNCTION_LEVEL`` below says which and why); it follows the
layers too, so none hides a cycle. ``if TYPE_CHECKING:`` imports do not count.

    layer        packages                                      what they hold
    base         metrictransfer errors io params registry output_folder readback formatting  version, errors, files, manifests, registries
    config       normalization model_names config              input conventions and timm names, the recipe schema
    parts        data models losses                            datasets and samplers, backbones and embedding models, losses
    runtime      runtime                                       the device, torch.distributed helpers, checkpoint files, a run's model
    evaluation   evaluation                                    embeddings, retrieval metrics, test-split evaluation
    methods      methods                                       training strategies: their models, losses and evaluation
    engine       engine                                        the training loop, callbacks, run folders, logs, result tables
    apps         search export report demo distill tuning      index and search, export, run reports, the demo, distill, tune
    cli          cli                                           the command line

``metrictransfer`` is the package's own ``__init__`` (``__version__``). scripts/import_graph.py prints
the graph these tests check (``--all`` with function-level imports).
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
    "metrictransfer.cli": {
        "*": "each command imports what it runs: --help, usage and configuration errors answer without loading torch",
    },
    "metrictransfer.data.inspect": {
        "metrictransfer.data.glyphs": "defers torch and matplotlib: inspecting a folder of files reads annotation files only",
    },
    "metrictransfer.data.registry": {
        "metrictransfer.data.glyphs": "defers torch and matplotlib to building a glyphs split",
        "metrictransfer.data.images": "defers torch to building a split of files: reading annotation files needs none",
    },
    "metrictransfer.distill": {
        "metrictransfer.config": "defers pydantic: the command line reads distill's defaults to build --help",
    },
    "metrictransfer.evaluation.knn": {
        "metrictransfer.evaluation.fold_kernel": "defers numba (about 1 s to load) to evaluations large enough to use its kernel",
    },
    "metrictransfer.search": {
        "metrictransfer.search.build": "defers torch: searching an index (search, serve) loads none",
        "metrictransfer.search.checkpoint_model": "defers torch: searching an index (search, serve) loads none",
    },
    "metrictransfer.search.gallery": {
        "metrictransfer.search.checkpoint_model": "defers torch to indexes without an exported model, or search --checkpoint",
    },
    "metrictransfer.search.grid": {
        "metrictransfer.engine.logging": "defers matplotlib (engine.logging loads it, with the Agg backend) to drawing a grid",
    },
}

ROW = re.compile(r"^ {4}(\w+) {2,}([\w ]+?) {2,}\S")


def _layer_section() -> str:
    return __doc__[__doc__.index("Layers\n") :].split("\n\n``metrictransfer``")[0]


def _layers() -> dict[str, tuple[int, str]]:
    """package → (rank, layer name), from the table in this module's docstring."""
    rows = [ROW.match(line) for line in _layer_section().splitlines()]
    rows = [m for m in rows if m and m.group(1) != "layer"]
    assert len(rows) >= 5, f"cannot read the layer table of tests/test_layers.py's docstring:\n{_layer_section()}"
    return {package: (rank, m.group(1)) for rank, m in enumerate(rows) for package in m.group(2).split()}


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
    return f"{what}:\n  " + "\n  ".join(problems) + f"\n\n{_layer_section()}"


def test_every_package_has_a_layer():
    packages = {graph.package_of(m) for m in graph.modules()}
    assert packages - LAYERS.keys() == set(), _fail(sorted(packages - LAYERS.keys()), "packages the layer table lacks")
    assert LAYERS.keys() - packages == set(), _fail(sorted(LAYERS.keys() - packages), "packages in the table that do not exist")


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
