"""The ``metrictransfer`` command line: :func:`main` runs one command (its ``cmd_*`` function in
:mod:`.commands`, its options in :mod:`.parser`) and turns expected failures into one line and an exit status."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings

from metrictransfer.cli.commands import cmd_distill, cmd_train
from metrictransfer.cli.commands_help import COMMANDS
from metrictransfer.cli.parser import build_parser

# Only light modules here: torch and the rest load inside the commands, where Ctrl-C is handled.
from metrictransfer.errors import MetricTransferError, is_output_problem, output_error

__all__ = ["COMMANDS", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run one command. Expected failures (:class:`~metrictransfer.errors.MetricTransferError`, and a full,
    read-only or forbidden output place) print one line and exit 2, or 1 for a fault of the machine (a
    full disk); Ctrl-C exits 130 without a traceback; anything else is a bug and keeps its traceback."""
    debug = os.environ.get("METRICTRANSFER_DEBUG", "") not in ("", "0")
    from metrictransfer.engine.interrupt import Interrupted, defer_termination

    args: argparse.Namespace | None = None
    if not debug:
        warnings.formatwarning = _one_line_warning
    try:
        args = build_parser().parse_args(argv)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.func in (cmd_train, cmd_distill):
            defer_termination()  # a training whose partner failed says so in one line before it ends
        debug = debug or getattr(args, "debug", False)
        status: int = args.func(args)
        return status
    except Interrupted as stop:
        print(f"metrictransfer: {stop}", file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:
        _report(debug, "interrupted (Ctrl-C)")
        return 130
    except MetricTransferError as err:
        _report(debug, f"error: {_own_words(err)}")
        return err.exit_status
    except OSError as err:
        if not is_output_problem(err):
            raise
        made = output_error(err, verb="use")  # raised outside our writers: read or write
        _report(debug, f"error: {made}")
        return made.exit_status  # 1 for a full disk or an I/O error, 2 for a place the user chose
    except RuntimeError as err:
        lost = _lost_process(err, args)
        if lost is None:
            raise
        _report(debug, f"error: {lost}")
        return 1


def _lost_process(err: RuntimeError, args: argparse.Namespace | None) -> str | None:
    """One line for a collective operation that failed under torchrun because another process of the run
    ended (killed, out of memory, its machine lost): what happened and how to go on. None for any other
    error, which keeps its traceback."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or not any(
        "torch/distributed/" in frame.filename.replace(os.sep, "/") for frame in traceback.extract_tb(err.__traceback__)
    ):
        return None
    cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    cause = cause.split("] ", 1)[-1].split(". ")[0]  # gloo's "[file:line] Read error ...: Connection reset by peer"
    run = getattr(args, "resume", None) or getattr(args, "out", None)
    go_on = f"continue it with the same torchrun command and `metrictransfer train --resume {run}`" if run else "run the command again"
    rank = os.environ.get("RANK", "?")
    return (
        f"process {rank} of {world}: another process of this run ended or stopped answering ({cause}); its last checkpoint is kept: {go_on}"
    )


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    """A warning as one line in our words, without the source line that raised it (``--debug`` keeps
    Python's format): a skipped image or a lossy conversion is news to the user; where in our code it was
    noticed is not."""
    return f"metrictransfer: warning: {message}\n"


def _own_words(err: BaseException) -> str:
    """The error's message; for one re-raised from a DataLoader worker, its own message without the
    worker's traceback that PyTorch puts before it ("Caught BadImageError in DataLoader worker process 0.
    Original Traceback ...": forty lines for one broken image)."""
    text = str(err)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        last = text.strip().splitlines()[-1]  # "metrictransfer.errors.BadImageError: cannot read image ..."
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def _report(debug: bool, message: str) -> None:
    if debug:
        traceback.print_exc()
    print(f"metrictransfer: {message}", file=sys.stderr)
