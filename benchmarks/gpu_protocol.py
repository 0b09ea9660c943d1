"""The papers' protocol end to end on one GPU: a CUB source and one Table 1 cell, measured epoch by epoch.

    .venv/bin/python -m benchmarks.gpu_protocol [--epochs 3] [--workers N]
    .venv/bin/python -m benchmarks.gpu_protocol --dry     # toy sizes on the CPU (CI), results to a temporary folder

On a synthetic tree of CUB-200-2011's size and layout (benchmarks/common.py: 500 × 375 JPEGs, 100 training
classes and 100 test classes of 59 images, 5,900 each; CUB has 5,864 and 5,924), with the real recipes
(``recipes/cub_source.yaml``, then ``recipes/table1/cub_compression_relaxed_contrastive.yaml`` from it),
``model.pretrained=false`` (no download; the speed is the same), the recipes' evaluation every epoch, and the
settings the long-runs guide recommends for a GPU (``data.cache: memory``, ``data.num_workers`` = the cores,
up to 16; the test split's views kept):

1. the source trains ``--epochs`` epochs, in this process;
2. the transfer trains as ``metrictransfer train`` in a process of its own, is killed with SIGKILL in its
   second epoch, and is resumed with ``metrictransfer train --resume`` to the end (its later epochs are
   timed by their log rows);
3. the transfer is exported (TorchScript) and indexes the test images (``metrictransfer index`` on a CSV of them).

Every epoch's wall time (training, data wait, evaluation, checkpoint) is read off the run, and the full
recipe's hours are its first epoch (start-up, the cache and the kept views are built there) plus its other
epochs at the measured later epochs' median: measured epochs summed to the recipe's 90, not steps times a
projected evaluation. Writes benchmarks/results/gpu_protocol.md and .json.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import DRY_RESULTS, RESULTS, ROOT, environment, parser, write_cub_tree, write_results

SOURCE = "recipes/cub_source.yaml"
TRANSFER = "recipes/table1/cub_compression_relaxed_contrastive.yaml"
DRY_NOTE = " (DRY RUN: toy sizes on the CPU, every model ResNet-10t; not a measurement)"


def epoch_rows(run: Path) -> list[dict]:
    return json.loads((run / "results.json").read_text())["history"]


class EpochClock:
    """Wall-clock time at the start of a run's training and at each epoch's end (a Trainer callback)."""

    def __init__(self) -> None:
        from metrictransfer.engine.callbacks import Callback

        clock = self

        class Stamps(Callback):
            def on_fit_start(self, trainer) -> None:
                clock.stamps.append(time.perf_counter())

            def on_epoch_end(self, trainer, epoch, row) -> None:
                clock.stamps.append(time.perf_counter())

        self.stamps: list[float] = []
        self.callback = Stamps()


def full_hours(started: float, stamps: list[float], epochs: int) -> dict:
    """The recipe's hours: up to the first epoch's end, then its other epochs at the later epochs' median."""
    walls = [b - a for a, b in zip(stamps, stamps[1:])]
    first = stamps[1] - started
    later = statistics.median(walls[1:]) if len(walls) > 1 else walls[0]
    return {
        "epoch_walls_s": [round(w, 2) for w in walls],
        "until_first_epoch_end_s": round(first, 1),
        "later_epoch_s": round(later, 2),
        "full_hours": (first + (epochs - 1) * later) / 3600,
    }


def test_gallery(root: Path) -> Path:
    """A CSV of the tree's test images (classes 101–200), the gallery the index phase embeds: what a user
    indexes after a Table 1 run, at half the images of the whole tree (on the H200 the whole tree's 11,800
    did not fit the protocol's share of the check)."""
    classes = dict(line.split() for line in (root / "image_class_labels.txt").read_text().splitlines())
    rows = ["path,label"]
    for line in (root / "images.txt").read_text().splitlines():
        image_id, rel = line.split(maxsplit=1)
        if int(classes[image_id]) > 100:
            rows.append(f"images/{rel},{rel.split('/')[0]}")
    out = root / "test_gallery.csv"
    out.write_text("\n".join(rows) + "\n")
    return out


def phase(name: str, record: dict) -> float:
    """Print and record the start of a phase: when a time limit kills this script, its log still says
    which phase it was in and how long the earlier ones took."""
    now = time.perf_counter()
    stamps = record.setdefault("phases", [])
    if stamps:
        stamps[-1]["seconds"] = round(now - stamps[-1]["began"], 1)
        print(f"[gpu_protocol] {stamps[-1]['phase']}: {stamps[-1]['seconds']:.1f} s", flush=True)
    stamps.append({"phase": name, "began": now})
    print(f"[gpu_protocol] {name} ...", flush=True)
    return now


def run_cli(arguments: list[str], log: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "metrictransfer.cli", *arguments],
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def killed_and_resumed(recipe: str, out: Path, overrides: list[str], logs: Path, timeout: float) -> dict:
    """Train ``recipe`` in a process of its own, SIGKILL it after its first epoch ended and its second began,
    resume it to the end; the wall times of each part."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sets = [item for override in overrides for item in ("--set", override)]
    started = time.perf_counter()
    first = run_cli(["train", str(ROOT / recipe), "--out", str(out), *sets], logs / "transfer.log", env)
    log = out / "log.csv"
    while first.poll() is None and not (log.is_file() and len(log.read_text().splitlines()) >= 2):
        if time.perf_counter() - started > timeout:
            break
        time.sleep(0.2)
    into_second = time.perf_counter()  # the first epoch's row is in log.csv: start-up and epoch 1 are over
    while first.poll() is None and time.perf_counter() - into_second < 3.0:  # some steps into epoch 2
        time.sleep(0.1)
    killed = first.poll() is None
    if killed:
        os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = time.perf_counter()
    resume = run_cli(["train", "--resume", str(out)], logs / "resume.log", env)
    code = resume.wait(timeout=max(1.0, timeout - (killed_at - started)))
    ended = time.perf_counter()
    return {
        "killed": killed,
        "until_first_epoch_end_s": round(into_second - started, 1),
        "killed_after_s": round(killed_at - started, 1),
        "resume_s": round(ended - killed_at, 1),
        "resume_exit": code,
        "resume_log_tail": (logs / "resume.log").read_text().splitlines()[-3:],
    }


def main() -> int:
    options = parser(__doc__)
    options.add_argument("--dry", action="store_true", help="toy sizes on the CPU; results in a temporary folder")
    options.add_argument("--epochs", type=int, default=3, help="epochs of each run (the recipes have 90)")
    options.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1), help="data.num_workers")
    options.add_argument("--timeout", type=float, default=240.0, help="seconds for the killed and resumed transfer")
    options.add_argument("--out", type=Path, help="results folder (default: benchmarks/results, or a temporary one when dry)")
    args = options.parse_args()
    if not args.dry and not torch.cuda.is_available():
        print("gpu_protocol: no CUDA device here; run with --dry for the CPU toy run", file=sys.stderr)
        return 1
    from metrictransfer.config import load_config
    from metrictransfer.engine.trainer import train

    device = "cpu" if args.dry else "cuda"
    workers = min(args.workers, 2) if args.dry else args.workers
    common = [
        "model.pretrained=false",
        f"optim.epochs={args.epochs}",
        f"device={device}",
        f"data.num_workers={workers}",
        "data.cache=memory",
        "eval.every=1",
        *(["data.image_size=32", "model.backbone=resnet10t", "threads=1"] if args.dry else []),
    ]
    recipe_epochs = {
        key: load_config(ROOT / recipe, ["data.root=unused"]).optim.epochs for key, recipe in (("source", SOURCE), ("transfer", TRANSFER))
    }
    name = "gpu_protocol_dry" if args.dry else "gpu_protocol"
    out_dir = args.out or (DRY_RESULTS if args.dry else RESULTS)
    record: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "overrides": common}
    with tempfile.TemporaryDirectory(prefix="gpu-protocol-") as tmp:
        work = Path(tmp)
        per_class, test_per_class = (4, 2) if args.dry else (59, 59)
        # a picture per class: Recall@1 near 100 % says labels, order and evaluation are right (cycled pictures
        # put every copy in another class and gave 0.0 % in every epoch on the first H200 run)
        phase("synthetic CUB tree", record)
        size = (125, 94) if args.dry else (500, 375)
        tree = write_cub_tree(work / "CUB_200_2011", per_class, test_per_class, size=size, distinct=200, by_class=True)
        record["tree"] = tree
        print(f"synthetic CUB tree: {tree}", flush=True)
        overrides = [*common, f"data.root={tree['root']}"]

        clock = EpochClock()
        started = phase("source: 3 epochs in this process", record)
        train(load_config(ROOT / SOURCE, overrides), work / "source", progress=False, extra_callbacks=[clock.callback])
        record["source"] = {
            "recipe": SOURCE,
            **full_hours(started, clock.stamps, recipe_epochs["source"]),
            "rows": epoch_rows(work / "source"),
        }

        transfer_overrides = [*overrides, f"transfer.source_checkpoint={work / 'source'}"]
        phase("transfer: trained, killed in its second epoch, resumed (its report included)", record)
        kill = killed_and_resumed(TRANSFER, work / "transfer", transfer_overrides, work, args.timeout)
        record["transfer_kill"] = kill
        rows = epoch_rows(work / "transfer") if (work / "transfer" / "results.json").is_file() else []
        # the epochs after the killed one ran whole after the resume: their rows time them (the checkpoint's
        # write, under a second, is the only part of an epoch they leave out)
        clean = [row["train_seconds"] + row.get("eval_seconds", 0.0) for row in rows[2:]] or [float("nan")]
        later = statistics.median(clean)
        first = kill["until_first_epoch_end_s"]
        record["transfer"] = {
            "recipe": TRANSFER,
            "rows": rows,
            "epoch_walls_s": [first, None, *[round(c, 2) for c in clean]],
            "until_first_epoch_end_s": first,
            "later_epoch_s": round(later, 2),
            "full_hours": (first + (recipe_epochs["transfer"] - 1) * later) / 3600,
        }

        steps = {}
        model, index, images = work / "model.pt", work / "index", test_gallery(Path(tree["root"]))
        for label, arguments in (
            ("export", ["export", "--checkpoint", str(work / "transfer"), "--format", "torchscript", "--out", str(model)]),
            ("index", ["index", "--checkpoint", str(work / "transfer"), "--images", str(images), "--out", str(index)]),
        ):
            began = phase(f"metrictransfer {label}", record)
            done = subprocess.run([sys.executable, "-m", "metrictransfer.cli", *arguments], cwd=ROOT, capture_output=True, text=True)
            took = round(time.perf_counter() - began, 1)
            steps[label] = {"exit": done.returncode, "seconds": took, "tail": done.stderr.splitlines()[-2:]}
        record["after"] = steps
        phase("done", record)
        record["phases"] = [{"phase": p["phase"], "seconds": p["seconds"]} for p in record["phases"][:-1]]
    record["environment"] = environment(device)
    rerun = "gpu_protocol" + (" --dry" if args.dry else f" --epochs {args.epochs}")
    write_results(name, report(record, args), record, rerun=rerun, out=out_dir)
    kill = record["transfer_kill"]
    finished = len(record["transfer"]["rows"]) == args.epochs and kill["resume_exit"] == 0
    ok = finished and all(step["exit"] == 0 for step in record["after"].values()) and (kill["killed"] or args.dry)
    return 0 if ok else 1


def report(record: dict, args) -> list[str]:
    env, tree, kill = record["environment"], record["tree"], record["transfer_kill"]
    lines = [
        f"# The papers' protocol end to end{DRY_NOTE if args.dry else ''}: {env['device']}",
        "",
        f"torch {env['torch']}, CUDA {env['cuda']}, {env['cpu_cores']} CPU cores; synthetic CUB tree of {tree['train_images']:,} "
        + f"training and {tree['test_images']:,} test JPEGs ({tree['size'][0]} × {tree['size'][1]}); overrides: "
        + ", ".join(f"`{o}`" for o in record["overrides"])
        + ".",
        "",
        "| run | recipe | epoch | train s | data wait | eval s | epoch wall s | Recall@1 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ("source", "transfer"):
        for row, wall in zip(record[key]["rows"], record[key]["epoch_walls_s"]):
            shown = "killed, resumed" if wall is None else f"{wall:.1f}"
            lines.append(
                f"| {key} | `{record[key]['recipe']}` | {row['epoch']} | {row['train_seconds']:.1f} | {row.get('data_wait', 0):.0%} | "
                f"{row.get('eval_seconds', 0):.1f} | {shown} | {100 * row.get('recall@1', float('nan')):.1f} |"
            )
    source, transfer = record["source"], record["transfer"]
    if kill["killed"]:
        killed = f"the transfer was killed (SIGKILL) {kill['killed_after_s']} s in, in its second epoch"
    else:
        killed = "the transfer was NOT killed (it ended first)"
    lines += [
        "",
        f"- Full recipes on this device, from these epochs: the source **{source['full_hours']:.2f} h**, one Table 1 cell after it "
        + f"**{transfer['full_hours']:.2f} h** (the first epoch as measured: {source['until_first_epoch_end_s']:.0f} s and "
        + f"{transfer['until_first_epoch_end_s']:.0f} s with start-up, cache and kept views; then the later epochs' median wall, "
        + f"{source['later_epoch_s']:.1f} s and {transfer['later_epoch_s']:.1f} s, evaluation included; the source's checkpoint too).",
        f"- Kill and resume: {killed}; `train --resume` finished it in {kill['resume_s']:.0f} s (exit {kill['resume_exit']}), "
        + f"{len(transfer['rows'])} epochs in its history.",
        "- Phases (wall seconds, start-ups included): " + "; ".join(f"{p['phase']} {p['seconds']:.0f}" for p in record["phases"]) + ".",
        "- After training: "
        + "; ".join(f"`metrictransfer {label}` exit {s['exit']} in {s['seconds']:.0f} s" for label, s in record["after"].items())
        + ".",
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
