"""Where the time of `make demo` goes: the full-length demo, timed by phase.

    .venv/bin/python -m benchmarks.demo_profile [--seed 0] [--threads 2]

Runs ``metrictransfer demo`` in this process with wall-clock timers around each phase (a wrapper per
function, so the phases cost what they cost without a profiler's overhead):

- data: the training loader's ``next`` (sampling, glyph images, augmentation, collation);
- evaluation: each evaluated epoch (embedding the test split and the exact metrics; its own loader included);
- checkpoints: writing, verifying and rotating the run's checkpoints;
- reports: each model's report.md (curves, retrieval grid, embedding map) and the demo's;
- training steps: the rest of ``train`` (forward, loss, backward, optimiser, logging).

Writes benchmarks/results/demo_profile.md and .json.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.common import parser, write_results

TIMES: dict[str, float] = defaultdict(float)
COUNTS: dict[str, int] = defaultdict(int)
_ACTIVE: set[str] = set()


def timed(phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function``, adding its wall time to ``phase`` (nested calls of one phase count once)."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if phase in _ACTIVE:
            return function(*args, **kwargs)
        _ACTIVE.add(phase)
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            TIMES[phase] += time.perf_counter() - started
            COUNTS[phase] += 1
            _ACTIVE.discard(phase)

    return wrapper


def instrument() -> None:
    import metrictransfer.demo as demo
    import metrictransfer.engine.trainer as trainer
    from metrictransfer.methods import METHODS

    class TimedLoader(trainer.DataLoader):  # type: ignore[misc, name-defined]
        def __iter__(self):  # type: ignore[no-untyped-def]
            iterator = super().__iter__()
            step = timed("data", iterator.__next__)
            while True:
                try:
                    yield step()
                except StopIteration:
                    return

    trainer.DataLoader = TimedLoader
    trainer.save_run_checkpoint = timed("checkpoints", trainer.save_run_checkpoint)
    trainer.train = timed("train", trainer.train)
    demo.train = trainer.train
    demo.write_report = timed("reports", demo.write_report)
    demo.write_demo_report = timed("reports", demo.write_demo_report)
    seen = set()
    for name in METHODS.names():
        for cls in METHODS.get(name).__mro__:
            if "evaluate" in cls.__dict__ and cls not in seen:
                seen.add(cls)
                cls.evaluate = timed("evaluation", cls.__dict__["evaluate"])


def _commit() -> str:
    """The measured code's commit (with ``-dirty`` when the working tree differs from it)."""
    found = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True, cwd=Path(__file__).parent)
    return found.stdout.strip() or "unknown"


def main() -> None:
    options = parser(__doc__, name="demo_profile")
    options.add_argument("--seed", type=int, default=0)
    options.add_argument("--threads", type=int, default=2)
    options.add_argument("--epochs-scale", type=float, default=1.0)
    args = options.parse_args()
    torch.set_num_threads(args.threads)
    instrument()
    from metrictransfer.demo import run_demo

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        summary = run_demo(Path(tmp) / "demo", seed=args.seed, epochs_scale=args.epochs_scale, progress=False)
        total = time.perf_counter() - started
    steps = TIMES["train"] - TIMES["data"] - TIMES["evaluation"] - TIMES["checkpoints"]
    phases = {
        "training steps (forward, loss, backward, optimiser)": steps,
        "data (sampling, images, augmentation, collation)": TIMES["data"],
        "evaluation (embedding the test split, exact metrics)": TIMES["evaluation"],
        "checkpoints (write, verify, rotate)": TIMES["checkpoints"],
        "reports (curves, retrieval grids, embedding maps)": TIMES["reports"],
        "other (configuration, data set-up, logs, plots)": total - TIMES["train"] - TIMES["reports"],
    }
    lines = [
        f"# Where `make demo` spends its time (seed {args.seed}, epochs × {args.epochs_scale})",
        "",
        f"{args.threads} thread(s); wall-clock timers per "
        f"phase in one run. Evaluations: {COUNTS['evaluation']}; checkpoints written: {COUNTS['checkpoints']}; "
        f"training batches: {COUNTS['data']}.",
        "",
        "| phase | seconds | share |",
        "|---|---:|---:|",
    ]
    lines += [f"| {phase} | {seconds:.1f} | {100 * seconds / total:.0f} % |" for phase, seconds in phases.items()]
    lines += [f"| **whole demo** | **{total:.1f}** | 100 % |", ""]
    recalls = ", ".join(f"{name} {100 * m['recall@1']:.1f}" for name, m in summary["models"].items())
    lines += [f"Recall@1 (%): {recalls}.", ""]
    scale = f" --epochs-scale {args.epochs_scale}" if args.epochs_scale != 1 else ""
    name = f" --name {args.name}" if args.name != "demo_profile" else ""
    lines.append(f"Code: commit {_commit()}.")
    record = {"args": vars(args), "seconds": phases, "total": total, "counts": dict(COUNTS), "recall@1": summary["models"]}
    write_results(args.name, lines, record, rerun=f"demo_profile --seed {args.seed} --threads {args.threads}{scale}{name}")


if __name__ == "__main__":
    main()
