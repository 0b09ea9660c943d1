"""Check that a refactor changed no result: the demo's seed-0 results.json, before and after, compared.

Why: a refactor (a module moved, a function folded into another) must leave every number the code computes
as it was. The demo trains three models end to end (a source, a target alone, the target with transfer) on
glyph images it renders itself, so its results.json files (the demo's summary and each model's own, with its
per-epoch history) change when anything on that path changes: data, transforms, models, losses, training,
evaluation. On the CPU the same code gives the same numbers to the last digit, so any difference is a change.

How: run the demo of the tree before the change (a ``git worktree`` of that commit, run with this
environment's Python and that tree's ``src/`` first on ``PYTHONPATH``), then the demo of this tree, and
compare::

    git worktree add /tmp/mt-base COMMIT
    .venv/bin/python scripts/compare_demo_results.py --tree /tmp/mt-base --out runs/demo-base
    .venv/bin/python scripts/compare_demo_results.py --out runs/demo-new --against runs/demo-base
    .venv/bin/python scripts/compare_demo_results.py --compare runs/demo-base runs/demo-new  # two demos already run

The full demo takes about half an hour on 2 cores. Each demo renders its glyphs into a fresh temporary
cache, so a change to the rendering shows too. Fields that differ from run to run whatever the code
(:data:`IGNORED`: timings) are left out of the comparison, and every other difference is printed. Exit
status: 0 identical, 1 a difference, 2 the demo failed or the folders hold no results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: Keys of results.json (at any depth: each model's per-epoch history rows) that measure time, not results.
#: The demo's results.json files hold no dates, versions or paths (those are in config.json, the checkpoints
#: and the manifests, which are not compared).
IGNORED = {
    "train_seconds": "seconds an epoch's training took",
    "eval_seconds": "seconds an evaluation took",
    "data_wait": "the share of an epoch's training time spent waiting for batches",
}


def run_demo(tree: Path, out: Path, seed: int, epochs_scale: float) -> float:
    """``metrictransfer demo --out OUT`` of the source tree ``tree``; returns the seconds it took."""
    source = tree.resolve() / "src"
    if not (source / "metrictransfer" / "demo.py").is_file():
        sys.exit(f"compare_demo_results: {tree} is not a metrictransfer source tree (no src/metrictransfer/demo.py)")
    cache = tempfile.mkdtemp(prefix="mt-glyphs-")  # glyphs rendered by this tree's code, not read from another's cache
    env = {**os.environ, "PYTHONPATH": str(source), "METRICTRANSFER_CACHE": cache}
    try:
        where = [sys.executable, "-c", "import metrictransfer; print(metrictransfer.__file__)"]
        found = subprocess.run(where, env=env, cwd=tree, capture_output=True, text=True)
        if not found.stdout.strip().startswith(str(source)):
            sys.exit(f"compare_demo_results: metrictransfer is imported from {found.stdout.strip() or found.stderr}, not from {source}")
        command = [sys.executable, "-m", "metrictransfer.cli", "demo", "--out", str(out), "--seed", str(seed)]
        if epochs_scale != 1:
            command += ["--epochs-scale", str(epochs_scale)]
        print(f"compare_demo_results: PYTHONPATH={source} metrictransfer demo --out {out} --seed {seed} (in {tree})", flush=True)
        started = time.monotonic()
        status = subprocess.run(command, env=env, cwd=tree).returncode
        seconds = time.monotonic() - started
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if status != 0:
        print(f"compare_demo_results: the demo failed (exit {status})", file=sys.stderr)
        sys.exit(2)
    print(f"compare_demo_results: the demo took {seconds / 60:.1f} min", flush=True)
    return seconds


def results_files(demo: Path) -> dict[str, Any]:
    """The demo folder's results.json files (its own and each model's), by path relative to it."""
    files = {str(p.relative_to(demo)): json.loads(p.read_text()) for p in sorted(demo.rglob("results.json"))}
    if "results.json" not in files:
        print(f"compare_demo_results: {demo} holds no results.json: not a finished demo", file=sys.stderr)
        sys.exit(2)
    return files


def differences(a: Any, b: Any, where: str) -> list[str]:
    """Every place where ``a`` and ``b`` differ, but for the :data:`IGNORED` keys; exact, floats included."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in list(a) + [k for k in b if k not in a]:
            if key in IGNORED:
                continue
            if key not in b:
                found.append(f"{where}.{key}: only in the first ({json.dumps(a[key])[:80]})")
            elif key not in a:
                found.append(f"{where}.{key}: only in the second ({json.dumps(b[key])[:80]})")
            else:
                found += differences(a[key], b[key], f"{where}.{key}")
        return found
    if isinstance(a, list) and isinstance(b, list):
        found = [f"{where}: {len(a)} items → {len(b)}"] if len(a) != len(b) else []
        for i, (x, y) in enumerate(zip(a, b)):
            found += differences(x, y, f"{where}[{i}]")
        return found
    same = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    if same and type(a) is type(b):
        return []
    return [f"{where}: {json.dumps(a)} → {json.dumps(b)}"]


def compare(first: Path, second: Path) -> int:
    """Print every difference between the two demos' results.json files; 1 when there is one."""
    a, b = results_files(first), results_files(second)
    found = []
    for name in sorted(set(a) | set(b)):
        if name not in b or name not in a:
            found.append(f"{name}: only in {first if name in a else second}")
        else:
            found += differences(a[name], b[name], name)
    ignored = ", ".join(sorted(IGNORED))
    if found:
        print(f"{len(found)} differences between {first} and {second} (ignoring {ignored}):")
        print("\n".join(f"  {line}" for line in found))
        return 1
    print(f"identical: the {len(a)} results.json files of {first} and {second} (ignoring {ignored})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the source tree whose demo runs (default: this one)")
    parser.add_argument("--out", type=Path, help="the folder the demo writes (new, or holding no demo)")
    parser.add_argument("--against", type=Path, metavar="DEMO_DIR", help="after the demo, compare its results with this demo's")
    parser.add_argument("--compare", type=Path, nargs=2, metavar="DEMO_DIR", help="only compare two demo folders already run")
    parser.add_argument("--seed", type=int, default=0, help="the demo's seed (default 0)")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="the demo's --epochs-scale (default 1; compare like with like)")
    args = parser.parse_args(argv)
    if args.compare:
        if args.out or args.against:
            parser.error("--compare takes two demo folders already run; --out and --against run a demo")
        return compare(*args.compare)
    if not args.out:
        parser.error("give --out (the folder the demo writes), or --compare DEMO_DIR DEMO_DIR")
    out = args.out.resolve()  # the demo runs in --tree: a relative --out is the caller's
    run_demo(args.tree, out, args.seed, args.epochs_scale)
    return compare(args.against.resolve(), out) if args.against else 0


if __name__ == "__main__":
    sys.exit(main())
