"""Ctrl-C and SIGTERM (a scheduler's preemption) end a run with a checkpoint instead of losing it."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any


class Interrupted(KeyboardInterrupt):
    """A signal ended the command after its work was saved; the CLI prints the message (what was kept and
    how to go on) and exits with 128 + the signal's number, as a shell expects."""

    signal_name = "SIGINT"

    @property
    def exit_status(self) -> int:
        return 128 + int(getattr(signal, self.signal_name, signal.SIGINT))


class TrainingInterrupted(Interrupted):
    """Raised after the checkpoint of an interrupted run is written."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path) -> None:
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        super().__init__(
            f"{signal_name} at step {step}: saved {checkpoint}; continue with metrictransfer train --resume {checkpoint.parent}"
        )


class ReportInterrupted(Interrupted):
    """A signal while a finished run's report was due: the run is kept whole, the report is not written."""

    def __init__(self, signal_name: str, run: Path) -> None:
        self.signal_name, self.run = signal_name, run
        super().__init__(
            f"{signal_name}: the run itself is finished and saved, its report was not written; "
            f"rebuild the report with: metrictransfer report {run}"
        )


_deferred: list[str] = []  # SIGTERMs held back by defer_termination


def defer_termination() -> None:
    """Under torchrun: hold back SIGTERM outside training instead of dying at once. torchrun sends it to
    every process when one of them fails; a process then still in its start-up or in the clean-up after an
    error must first say, in its one line, what happened. Training itself (:class:`GracefulStop`) stops at
    its next step, with a checkpoint, for a SIGTERM held back before it began."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: _deferred.append(signal.Signals(signum).name))


class GracefulStop:
    """While active, the first SIGINT or SIGTERM only sets ``requested``: the training loop finishes
    its step, saves and stops. A second one interrupts at once. Outside the main thread (where Python
    cannot install handlers) it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}  # signal → the handler it had

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # asked twice: stop now
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name}: finishing this step, then saving a checkpoint (send it again to stop at once)", flush=True)

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        if _deferred:  # a SIGTERM that arrived before training: the first step is the last
            self.requested, self.signal_name = True, _deferred[-1]
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
