"""How long the command line takes to answer when nothing heavy is needed.

    .venv/bin/python benchmarks/cli_startup.py [--repeats 15]

Times, in fresh processes, ``python -c pass`` (the interpreter's own start), ``metrictransfer --help``,
``metrictransfer train --help`` and an argument error, as the installed console script runs them; the
median of ``--repeats`` runs, interleaved, with the peak resident memory of the last run. Writes
benchmarks/results/cli_startup.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def timed(command: list[str]) -> tuple[float, float]:
    """Seconds and the child's peak resident memory in MB (the children's maximum so far: run the largest last)."""
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    script = shutil.which("metrictransfer", path=str(Path(sys.executable).parent)) or "metrictransfer"
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "metrictransfer --help": [script, "--help"],
        "metrictransfer train --help": [script, "train", "--help"],
        "metrictransfer train --no-such-flag (error)": [script, "train", "--no-such-flag"],
    }
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, command in commands.items():
            seconds[name].append(timed(command)[0])
    memory = {name: timed(command)[1] for name, command in commands.items()}  # running maximum, in this order
    lines = [
        "# Command-line start-up",
        "",
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}; median of {args.repeats} interleaved runs "
        "in fresh processes; peak MB: the running maximum of the children's resident memory.",
        "",
        "| command | median seconds | fastest | peak MB |",
        "|---|---:|---:|---:|",
    ]
    for name in commands:
        lines.append(f"| `{name}` | {statistics.median(seconds[name]):.3f} | {min(seconds[name]):.3f} | {memory[name]:.0f} |")
    lines += ["", "Goal: `--help` and argument errors in < 0.3 s.", ""]
    lines.append(f"Rerun: `.venv/bin/python benchmarks/cli_startup.py --repeats {args.repeats}`")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cli_startup.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "cli_startup.json").write_text(json.dumps({"args": vars(args), "seconds": seconds, "peak_mb": memory}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
