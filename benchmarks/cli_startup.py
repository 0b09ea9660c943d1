"""How long each command takes to answer on a small input, start-up included, and whether it loads PyTorch.

    .venv/bin/python -m benchmarks.cli_startup [--repeats 5]

Builds, in a temporary folder, a tiny finished run (the glyphs demo data, ResNet-10t, one epoch) and a
ResNet-50 checkpoint (512-d, 224 px; untrained weights: only the time matters), a gallery of 60 PNG
files in 3 class folders and an index of it by each model; then times, in fresh processes and as the
installed console script runs them, the commands a person types: help and argument errors, the commands
that read files only (``table``, ``data inspect``), and ``search`` for one query, with the index's
exported model (the default) and with the run's PyTorch checkpoint (``--checkpoint``). Median of
``--repeats`` interleaved runs; "loads torch" from one more run under ``python -X importtime``.
Writes benchmarks/results/cli_startup.md and .json.

Goals (issue "Real photo folders"): commands that need no model answer in under 1 s, and ``search``
answers one query in under 2 s on 2 cores, model and index loading included.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import parser, write_results

TINY = {
    "name": "tiny",
    "data": {"num_classes": 4, "classes_per_batch": 4, "images_per_class": 2, "views": 2, "image_size": 32},
    "model": {"backbone": "resnet10t", "embedding_dim": 16},
    "optim": {"lr": 1e-3, "epochs": 1},
    "eval": {"recall_at": [1, 2], "every": 0},
    "threads": 2,
}


def prepare(work: Path, script: str) -> dict[str, Path]:
    """A finished run, a gallery folder and its index under ``work``."""
    from metrictransfer.config import build_config
    from metrictransfer.engine.trainer import train

    run = work / "run"
    train(build_config(TINY), run, progress=False)
    gallery = work / "gallery"
    rng = np.random.default_rng(0)
    for c, colour in enumerate([(220, 30, 30), (30, 200, 40), (30, 40, 220)]):
        (gallery / f"class {c}").mkdir(parents=True)
        for i in range(20):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(gallery / f"class {c}" / f"{i}.png")
    index = work / "index"
    subprocess.run(
        [script, "index", "--checkpoint", str(run), "--images", str(gallery), "--out", str(index)], check=True, capture_output=True
    )
    # a model of the size users search with: ResNet-50, 512-d, 224-px photos (untrained weights: timing only)
    from metrictransfer.models import EmbeddingModel
    from metrictransfer.runtime.checkpoint import save_embedding_model

    big_config = build_config({"model": {"backbone": "resnet50", "embedding_dim": 512}})
    big = save_embedding_model(EmbeddingModel("resnet50", 512), big_config, work / "resnet50.pt")
    big_index = work / "index-resnet50"
    subprocess.run(
        [script, "index", "--checkpoint", str(big), "--images", str(gallery), "--out", str(big_index)], check=True, capture_output=True
    )
    query = gallery / "class 1" / "3.png"
    return {"run": run, "gallery": gallery, "index": index, "query": query, "big": big, "big_index": big_index}


def commands(script: str, files: dict[str, Path]) -> dict[str, tuple[str, list[str]]]:
    """name → (kind, command line)."""
    run, gallery, index, query, big, big_index = (str(files[k]) for k in ("run", "gallery", "index", "query", "big", "big_index"))
    return {
        "python -c pass": ("interpreter", [sys.executable, "-c", "pass"]),
        "metrictransfer --help": ("no model", [script, "--help"]),
        "metrictransfer train --help": ("no model", [script, "train", "--help"]),
        "metrictransfer train --no-such-flag (error)": ("no model", [script, "train", "--no-such-flag"]),
        "metrictransfer table RUN": ("no model", [script, "table", run]),
        "metrictransfer data inspect --dataset folder --root GALLERY": (
            "no model",
            [script, "data", "inspect", "--dataset", "folder", "--root", gallery],
        ),
        "metrictransfer data inspect (a folder that does not exist)": (
            "no model",
            [script, "data", "inspect", "--dataset", "folder", "--root", "/nonexistent"],
        ),
        "metrictransfer search QUERY --index INDEX": ("search", [script, "search", query, "--index", index, "--k", "5"]),
        "metrictransfer search QUERY --index INDEX --checkpoint RUN": (
            "search with PyTorch",
            [script, "search", query, "--index", index, "--k", "5", "--checkpoint", run],
        ),
        "metrictransfer search QUERY --index INDEX (ResNet-50, 224 px)": (
            "search",
            [script, "search", query, "--index", big_index, "--k", "5"],
        ),
        "metrictransfer search QUERY --index INDEX --checkpoint RUN (ResNet-50, 224 px)": (
            "search with PyTorch",
            [script, "search", query, "--index", big_index, "--k", "5", "--checkpoint", big],
        ),
    }


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def loads_torch(command: list[str]) -> bool:
    """Whether the command imports torch (``-X importtime`` lists every module imported)."""
    if command[0] == sys.executable:
        return False
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "metrictransfer.cli", *command[1:]], capture_output=True, text=True)
    return any(line.split("|")[-1].strip() == "torch" for line in done.stderr.splitlines())


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--repeats", type=int, default=5)
    args = options.parse_args()
    script = shutil.which("metrictransfer", path=str(Path(sys.executable).parent)) or "metrictransfer"
    work = Path(tempfile.mkdtemp(prefix="mt-startup-"))
    try:
        run_all(args, script, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_all(args: argparse.Namespace, script: str, work: Path) -> None:
    files = prepare(work, script)
    table = commands(script, files)
    seconds: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(args.repeats):
        for name, (_, command) in table.items():
            seconds[name].append(timed(command))
    torch_loaded = {name: loads_torch(command) for name, (_, command) in table.items()}
    goal = {"interpreter": None, "no model": 1.0, "search": 2.0, "search with PyTorch": None}
    lines = [
        "# Command-line start-up, per command",
        "",
        f"Median of {args.repeats} interleaved runs "
        "in fresh processes, as the installed console script runs them (start-up, model and index loading included); "
        "a tiny run (ResNet-10t, 16-d, 32 px) and a ResNet-50 (512-d, 224 px), each with an index of the same 60 PNG files.",
        "",
        "| command | kind | median s | fastest s | loads torch | goal |",
        "|---|---|---:|---:|---|---|",
    ]
    for name, (kind, _) in table.items():
        median, limit = statistics.median(seconds[name]), goal[kind]
        verdict = "" if limit is None else (f"< {limit:g} s: " + ("met" if median < limit else "**missed**"))
        lines.append(
            f"| `{name}` | {kind} | {median:.2f} | {min(seconds[name]):.2f} | {'yes' if torch_loaded[name] else 'no'} | {verdict} |"
        )
    lines += [
        "",
        "`search` embeds its queries with the index's `model.onnx` (written by `index`, checked against the PyTorch "
        "model) through onnxruntime, so it loads no PyTorch; `--checkpoint` embeds them with the run's PyTorch model, "
        "which loads torch and torchvision first.",
    ]
    record = {"args": vars(args), "seconds": seconds, "loads_torch": torch_loaded}
    write_results("cli_startup", lines, record, rerun=f"cli_startup --repeats {args.repeats}")


if __name__ == "__main__":
    main()
