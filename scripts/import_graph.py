"""Print the import graph between the packages of src/metrictransfer, and its cycles.

A package is a top-level part of metrictransfer: ``engine`` for ``metrictransfer.engine.trainer``,
``cli`` for ``metrictransfer.cli``, ``metrictransfer`` for the package's own ``__init__``. Imports are
read with ``ast`` (nothing is imported). By default only module-level imports count: those that run
when a module is imported (inside ``if``/``try``/class bodies too), not those inside a function body,
nor those under ``if TYPE_CHECKING:``. ``--all`` adds the function-level ones, marked ``*``.

    .venv/bin/python scripts/import_graph.py          # edges and cycles, module-level imports
    .venv/bin/python scripts/import_graph.py --all    # function-level imports too
    .venv/bin/python scripts/import_graph.py --where  # each edge's imports (file:line)

tests/test_layers.py reads modules with the functions here and checks the layers they must respect.
"""

from __future__ import annotations

import argparse
import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "metrictransfer"


@dataclass(frozen=True)
class Import:
    """One import of a metrictransfer module by another."""

    source: str  # the importing module, e.g. metrictransfer.engine.trainer
    target: str  # the imported module (or package), e.g. metrictransfer.runtime.distributed
    file: str  # the importing file, relative to the repository root
    line: int
    function_level: bool  # inside a function body: runs when the function is first called
    comment: str  # the end-of-line comment of the import's first line ('' if none)


def modules(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package: dotted name → file (``pkg/__init__.py`` is ``pkg``)."""
    found = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def package_of(module: str) -> str:
    """``metrictransfer.engine.trainer`` → ``engine``; ``metrictransfer`` → ``metrictransfer``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(body: list[ast.stmt], in_function: bool):
    """(statement, inside a function) for every import statement, skipping ``if TYPE_CHECKING:`` blocks."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _statements(node.body, True)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from _statements(node.orelse, in_function)
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                children = getattr(node, field, None)
                if isinstance(children, list):
                    nested = [c for c in children if isinstance(c, ast.stmt)]
                    nested += [s for c in children if isinstance(c, (ast.excepthandler, ast.match_case)) for s in c.body]
                    yield from _statements(nested, in_function)


def imports(module: str, path: Path, known: dict[str, Path]) -> list[Import]:
    """The metrictransfer modules ``module`` (the file ``path``) imports."""
    text = path.read_text()
    lines = text.splitlines()
    is_package = path.name == "__init__.py"
    found = []
    for node, in_function in _statements(ast.parse(text, str(path)).body, False):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            # ``from pkg import name``: the module pkg.name when there is one, else pkg itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        line = lines[node.lineno - 1]
        comment = line.split("#", 1)[1].strip() if "#" in line else ""
        file = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
        for target in dict.fromkeys(targets):
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                found.append(Import(module, _known_module(target, known), file, node.lineno, in_function, comment))
    return found


def _known_module(target: str, known: dict[str, Path]) -> str:
    while target not in known and "." in target:  # import a.b.c of an attribute c: the module a.b
        target = target.rsplit(".", 1)[0]
    return target


def all_imports(src: Path = SRC) -> list[Import]:
    known = modules(src)
    return [imp for name, path in known.items() for imp in imports(name, path, known)]


def package_edges(found: list[Import]) -> dict[tuple[str, str], list[Import]]:
    """(importing package, imported package) → the imports behind that edge; imports within a package are left out."""
    edges: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for imp in found:
        a, b = package_of(imp.source), package_of(imp.target)
        if a != b:
            edges[a, b].append(imp)
    return dict(sorted(edges.items()))


def cycles(edges) -> list[list[str]]:
    """Every elementary cycle of the directed graph ``edges`` (pairs), each starting at its smallest node."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    found = []
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in sorted(graph[node], reverse=True):
                if nxt == start:
                    found.append(path + [start])
                elif nxt > start and nxt not in path:
                    stack.append((nxt, path + [nxt]))
    return sorted(found, key=lambda c: (len(c), c))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="also function-level imports (marked *)")
    parser.add_argument("--where", action="store_true", help="list each edge's imports (file:line)")
    args = parser.parse_args(argv)
    found = [imp for imp in all_imports() if args.all or not imp.function_level]
    edges = package_edges(found)
    scope = "module-level and function-level (*) imports" if args.all else "module-level imports only"
    print(f"package edges ({scope}):")
    for (a, b), behind in edges.items():
        lazy = all(imp.function_level for imp in behind)
        print(f"  {a} -> {b}{' *' if lazy else ''}  ({len(behind)})")
        if args.where:
            for imp in behind:
                print(f"      {imp.file}:{imp.line} {imp.target}{' *' if imp.function_level else ''}")
    found_cycles = cycles(edges)
    print(f"cycles: {len(found_cycles) or 'none'}")
    for cycle in found_cycles:
        print("  " + " -> ".join(cycle))
    return 1 if found_cycles else 0


if __name__ == "__main__":
    raise SystemExit(main())
