"""Every GPU path in one command: ``make gpu-check`` (about 10 minutes on one H100).

    .venv/bin/python -m benchmarks.gpu_check          # needs CUDA
    .venv/bin/python -m benchmarks.gpu_check --dry    # the same scripts at toy sizes on the CPU (CI)

Runs, one after the other, each in its own process group with a time limit taken from one overall
budget (``--total``, 600 s), and prints one summary:

1. ``pytest -m gpu -q`` (tests/test_gpu.py; without CUDA they are all reported as skipped), the measured
   differences of the tests against their tolerances collected in gpu_tests_measured.jsonl;
2. benchmarks.gpu_throughput (training steps, data loader, evaluation), given what is left of the
   budget less the protocol run's share as its own ``--budget``;
3. benchmarks.gpu_protocol (the papers' protocol end to end: a CUB source and a Table 1 cell for 3 epochs
   each, evaluation every epoch, the transfer killed and resumed, export and index; measured hours).
   benchmarks.gpu_smoke (200 steps, projected hours) still runs on its own.

Real runs write their tables to benchmarks/results/ (gpu_throughput.md, gpu_protocol.md, and this summary
as gpu_check.md); dry runs write everything to a temporary folder. Exit status 1 if a stage failed or
ran out of time, or (without ``--dry``) if there is no CUDA device.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import DRY_RESULTS, RESULTS, ROOT, environment, parser, write_results


def run_stage(name: str, command: list[str], timeout: float, log: Path, env: dict | None = None) -> dict:
    """Run ``command`` with its output shown as it comes and kept in ``log``; on timeout kill its whole
    process group (torchrun workers and data-loader workers included)."""
    print(f"\n=== {name}: {' '.join(command)} (limit {timeout:.0f} s)", flush=True)
    started = time.perf_counter()
    lines: list[str] = []
    with open(log, "w") as sink:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

        def pump() -> None:
            for line in process.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                sink.write(line)
                lines.append(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            code = process.wait(timeout=max(1.0, timeout))
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            code, timed_out = process.wait(), True
        reader.join(timeout=10)
    seconds = time.perf_counter() - started
    status = "timed out" if timed_out else ("passed" if code == 0 else f"failed (exit {code})")
    return {
        "stage": name,
        "status": status,
        "ok": code == 0 and not timed_out,
        "seconds": round(seconds, 1),
        "tail": [line for line in lines if line.strip()][-3:],
        "log": str(log),
    }


def headline(stage: dict, out: Path, suffix: str) -> str:
    """One line of what a stage found: pytest's own last line, or the key numbers of the script's JSON."""
    try:
        if stage["stage"] == "gpu_throughput":
            cells = json.loads((out / f"gpu_throughput{suffix}.json").read_text())["cells"]
            counts: dict[str, int] = {}
            for cell in cells.values():
                counts[cell["status"]] = counts.get(cell["status"], 0) + 1
            best: dict[str, tuple[float, str]] = {}
            for key, cell in cells.items():
                if key.startswith("step|") and cell["status"] == "ok":
                    _, setting, precision, layout, mode = key.split("|")
                    if cell["images_per_s"] > best.get(setting, (0.0, ""))[0]:
                        best[setting] = (cell["images_per_s"], f"{precision}/{layout}/{mode}")
            return (
                ", ".join(f"{n} {status}" for status, n in counts.items())
                + "; best images/s: "
                + "; ".join(f"{setting.split(',')[0]} {v:,.0f} ({how})" for setting, (v, how) in best.items())
            )
        if stage["stage"] == "gpu_protocol":
            record = json.loads((out / f"gpu_protocol{suffix}.json").read_text())
            waits = [row.get("data_wait", 0.0) for key in ("source", "transfer") for row in record[key]["rows"]]
            return (
                f"Table 1 cell {record['transfer']['full_hours']:.2f} h after its source {record['source']['full_hours']:.2f} h "
                f"(measured epochs); data wait up to {max(waits):.0%}; killed and resumed: "
                f"{'yes' if record['transfer_kill']['killed'] else 'no'}"
            )
    except (OSError, KeyError, ValueError):
        pass
    return stage["tail"][-1] if stage["tail"] else ""


def measured_lines(path: Path) -> list[str]:
    """The tests' measured differences against their limits, worst first (closest to the limit)."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = []
    for r in rows:
        limit = r.get("limit")
        out.append(f"  {r['test']}: {r['name']} = {r['value']:.3g}" + (f" (limit {limit:.3g})" if limit is not None else ""))
    return out


def main() -> int:
    options = parser(__doc__)
    options.add_argument("--dry", action="store_true", help="toy sizes on the CPU; results in a temporary folder")
    options.add_argument("--total", type=float, default=600.0, help="seconds for all three stages together")
    args = options.parse_args()
    if args.dry and not os.environ.get("METRICTRANSFER_GPU_CHECK_CONTAINED"):
        return dry_run_in_its_own_folder()

    import torch

    if not args.dry and not torch.cuda.is_available():
        print(
            "gpu-check: no CUDA device here (torch.cuda.is_available() is False); "
            "`make gpu-check DRY=1` runs the same scripts at toy sizes on the CPU",
            file=sys.stderr,
        )
        return 1
    out = DRY_RESULTS if args.dry else RESULTS
    logs = Path(tempfile.mkdtemp(prefix="gpu-check-logs-"))
    out.mkdir(parents=True, exist_ok=True)
    measured = out / ("gpu_tests_measured_dry.jsonl" if args.dry else "gpu_tests_measured.jsonl")
    measured.unlink(missing_ok=True)
    dry = ["--dry"] if args.dry else []
    suffix = "_dry" if args.dry else ""
    for stale in (f"gpu_throughput{suffix}.json", f"gpu_protocol{suffix}.json"):  # never summarise an older run's file
        (out / stale).unlink(missing_ok=True)
    python = sys.executable
    started = time.perf_counter()

    def left() -> float:
        return args.total - (time.perf_counter() - started)

    # kept back for the protocol run while the others run (its dry run took 107 s on 2 loaded CPU cores; on an
    # H100 two CUDA start-ups, 3 + 3 epochs of about 10 s, export and index are expected in 3-4 minutes)
    protocol_share = 150.0 if args.dry else 210.0
    stages = [
        run_stage(
            "pytest -m gpu",
            [python, "-m", "pytest", "-m", "gpu", "-q", "--durations=8"],
            # the GPU tests took about 340 s on an H100 (2026-11-26): CUDA start-up in each subprocess, compilation;
            # at most 300 s here, so that the throughput cells (90 s) and the protocol run (210 s) keep their share
            min(300.0, left() - protocol_share - 90.0),
            logs / "pytest.log",
            env={"METRICTRANSFER_GPU_MEASURED": str(measured)},
        )
    ]
    # the throughput script stops starting cells at its budget; a started cell (a compilation) may run on
    budget = max(30.0, left() - protocol_share - 30.0)
    stages.append(
        run_stage(
            "gpu_throughput",
            [python, "-m", "benchmarks.gpu_throughput", *dry, "--budget", f"{budget:.0f}"],
            left() - protocol_share,
            logs / "throughput.log",
        )
    )
    protocol = [python, "-m", "benchmarks.gpu_protocol", *dry]
    stages.append(run_stage("gpu_protocol", protocol, max(60.0, left()), logs / "protocol.log"))
    total = time.perf_counter() - started

    device = "CPU (dry run)" if args.dry else torch.cuda.get_device_name(0)
    summary = [
        f"# gpu-check{' (DRY RUN: toy sizes on the CPU)' if args.dry else ''}: {device}, {total:.0f} s",
        "",
        "| stage | status | seconds | found |",
        "|---|---|---:|---|",
        *[f"| {s['stage']} | {s['status']} | {s['seconds']:.0f} | {headline(s, out, suffix).replace('|', '/')} |" for s in stages],
        "",
        f"- tables: {out / f'gpu_throughput{suffix}.md'}, {out / f'gpu_protocol{suffix}.md'}",
        f"- full output of each stage: {logs}",
    ]
    tests = measured_lines(measured)
    if tests:
        summary += ["- the GPU tests' measured differences (value, limit):", *tests]
    elif not args.dry:
        summary.append("- no measured differences were recorded (did the GPU tests run, or were they skipped?)")
    record = {"args": vars(args), "seconds": total, "stages": stages}
    env = environment("cpu" if args.dry else "cuda")
    write_results(f"gpu_check{suffix}", summary, record, rerun="gpu_check" + (" --dry" if args.dry else ""), out=out, env=env)
    ok = all(s["ok"] for s in stages)
    print(
        f"\ngpu-check: {'all stages passed' if ok else 'FAILED: ' + ', '.join(s['stage'] for s in stages if not s['ok'])}"
        f" in {total:.0f} s (limit {args.total:.0f} s)"
    )
    return 0 if ok else 1


def dry_run_in_its_own_folder() -> int:
    """The dry run (what CI runs after every change) with every temporary file of its scripts, their
    tables and logs, pytest's folders, torch's compile cache and multiprocessing's sockets, under one
    folder that is removed at the end: their output was shown as it came, and nothing piles up in /tmp."""
    import shutil

    work = tempfile.mkdtemp(prefix="metrictransfer-gpu-check-dry-")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "benchmarks.gpu_check", *sys.argv[1:]],
            env={**os.environ, "TMPDIR": work, "METRICTRANSFER_GPU_CHECK_CONTAINED": "1"},
            check=False,
        )
        return result.returncode
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
