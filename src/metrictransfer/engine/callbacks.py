"""What a run does around its training steps: logs, checkpoints, progress and result files.

``metrictransfer.engine.trainer.Trainer`` calls every callback's hooks in list order, so the
training loop itself stays free of bookkeeping, and a new output is a new callback, not a new branch in
the loop. Under torchrun only the first process gets the callbacks that write files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from metrictransfer.config import RunConfig
from metrictransfer.engine.logging import TensorBoardLog, plot_recall, primary_metric, write_csv
from metrictransfer.engine.results import best_row, curves, metrics_of, selection_key
from metrictransfer.formatting import metrics_text
from metrictransfer.io import atomic_write_text

if TYPE_CHECKING:
    from metrictransfer.engine.trainer import Trainer


def _run_folder(trainer: Trainer) -> Path:
    if trainer.out is None:
        raise RuntimeError(f"{type(trainer).__name__} has no run folder (out): it writes no files")
    return trainer.out


class Callback:
    """Hooks of a training run, each a no-op here. ``epoch`` is the 0-based index of the epoch (its log
    row says ``epoch + 1``); ``step`` counts the training steps since the run began, this one included."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first epoch that is trained (after a resume: the resumed one)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before the epoch's first batch (``trainer.done`` batches of it already ran when resumed)."""

    def on_step_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        """After the optimiser update; ``trainer.stop_requested`` says a SIGINT/SIGTERM ends the run next."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        """After the epoch's evaluation; ``row`` is already in ``trainer.history``."""

    def on_fit_end(self, trainer: Trainer, results: dict[str, Any]) -> None:
        """After the last epoch, with the run's results."""


class ProgressBar(Callback):
    """A progress bar per epoch, with the last step's loss."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        config = trainer.config
        self.bar = tqdm(
            desc=f"{config.name or config.method} epoch {epoch + 1}/{config.optim.epochs}",
            leave=False,
            unit="batch",
            initial=trainer.done,
            total=trainer.steps_per_epoch,
        )

    def on_step_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        if self.bar is None:
            raise RuntimeError("ProgressBar: on_step_end before on_epoch_start")
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{logs['loss']:.4f}")
        if self.bar.n >= self.bar.total:  # gone before the evaluation shows its own bar
            self.bar.close()

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        if self.bar is None:
            raise RuntimeError("ProgressBar: on_epoch_end before on_epoch_start")
        self.bar.close()


class EpochLine(Callback):
    """One line per epoch on stdout: loss, metrics, seconds."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        print(epoch_line(trainer.config, row), flush=True)

    def on_fit_end(self, trainer: Trainer, results: dict[str, Any]) -> None:
        if results.get("selection") == "validation":
            for line in final_test_lines(trainer.config, results):
                print(line, flush=True)


#: Share of an epoch's training time spent waiting for batches above which a run is called data-bound.
DATA_BOUND_SHARE = 0.2


class DataWaitHint(Callback):
    """Says once, in one line, when the steps wait for the loader for a large share of an epoch, and what
    to try. The first epoch a process trains is judged only when it is the last (it pays worker start-up)."""

    def __init__(self) -> None:
        self.first_epoch: int | None = None
        self.said = False

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.first_epoch = epoch if self.first_epoch is None else self.first_epoch

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        last = epoch + 1 == trainer.config.optim.epochs
        if self.said or (epoch == self.first_epoch and not last) or row.get("data_wait", 0.0) < DATA_BOUND_SHARE:
            return
        self.said = True
        print(data_wait_hint(trainer.config, row, os.cpu_count() or 1), flush=True)


def data_wait_hint(config: RunConfig, row: dict[str, Any], cores: int) -> str:
    """The one line of :class:`DataWaitHint`: how long the steps waited, and the settings that shorten it."""
    tries = [f"raise data.num_workers (now {config.data.num_workers}; this machine has {cores} CPU cores)"]
    if config.data.cache == "none" and config.data.dataset != "glyphs":  # the glyphs are drawn in memory already
        tries.append("set data.cache: memory (training images decoded once)")
    waited = f"the steps waited for the next batch {row['data_wait']:.0%} of epoch {row['epoch']}'s training time"
    return f"[{config.name or config.method}] data-bound: {waited}; " + ", or ".join(tries)


class Checkpoints(Callback):
    """The run's checkpoint, written every ``every_steps`` steps within an epoch, at every epoch's end,
    and after the step at which a stop signal arrived (the trainer then raises ``TrainingInterrupted``)."""

    def __init__(self, every_steps: int = 0) -> None:
        self.every = every_steps

    def on_step_end(self, trainer: Trainer, step: int, logs: dict[str, float]) -> None:
        due = self.every and step % self.every == 0 and trainer.done < trainer.steps_per_epoch
        if trainer.stop_requested or due:
            trainer.save_checkpoint()

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        trainer.save_checkpoint()


class BestModel(Callback):
    """``best.pt``: the models of the best validation epoch so far, by ``checkpoint.best``, written before
    the epoch's checkpoint (a crash between them repeats the epoch, which writes it again). Its layout is
    a checkpoint's, so ``evaluate``, ``export`` and ``index`` take ``RUN/best.pt``; it never selects on
    the test split: the trainer adds it only for runs with ``data.validation``."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        key = selection_key(trainer.config, trainer.method.output, trainer.history)
        best = best_row(trainer.history, key)
        if best is not None and best is row:
            trainer.save_best(key, row)


class CsvLog(Callback):
    """``log.csv``: the history so far, rewritten after every epoch. ``write`` is the writer (tests
    replace it to crash a run right after an epoch's checkpoint)."""

    def __init__(self, write: Callable[[list[dict[str, Any]], Path], None] = write_csv) -> None:
        self.write = write

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        self.write(trainer.history, _run_folder(trainer) / "log.csv")


class TensorBoard(Callback):
    """Every epoch's row as TensorBoard scalars under ``tensorboard/``."""

    def __init__(self) -> None:
        self.log: TensorBoardLog | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.log = TensorBoardLog(_run_folder(trainer) / "tensorboard")

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        self._log().write(row)

    def on_fit_end(self, trainer: Trainer, results: dict[str, Any]) -> None:
        self._log().close()

    def _log(self) -> TensorBoardLog:
        if self.log is None:
            raise RuntimeError("TensorBoard: on_fit_start was not called")
        return self.log


class FinalFiles(Callback):
    """``results.json`` and ``recall.png`` (the primary metric's curve per evaluated model)."""

    def on_fit_end(self, trainer: Trainer, results: dict[str, Any]) -> None:
        out = _run_folder(trainer)
        atomic_write_text(json.dumps(results, indent=2), out / "results.json")
        primary = primary_metric(trainer.history)
        plot_recall(curves(trainer.config, trainer.history, primary), out / "recall.png", primary)


# ------------------------------------------------------------------------------------- what a person reads


def epoch_line(config: RunConfig, row: dict[str, Any]) -> str:
    """The epoch's loss, its metrics in percent (as the report and ``table`` show them; log.csv keeps
    fractions) and its seconds."""
    parts = [f"[{config.name or config.method}] epoch {row['epoch']}/{config.optim.epochs}", f"loss {row.get('loss', float('nan')):.4f}"]
    if row.get("evaluated_on") == "validation":
        parts.append("validation:")
    metrics = metrics_text({k: v for k, v in metrics_of(row).items() if "/" not in k or k.endswith("/recall@1")})
    parts += [metrics] if metrics else []
    seconds = f"{row['train_seconds']:.1f}s"
    if "data_wait" in row:  # rows of earlier versions have none
        seconds += f" (data wait {row['data_wait']:.0%})"
    if "eval_seconds" in row:
        seconds += f" + eval {row['eval_seconds']:.1f}s"
    parts.append(seconds)
    return "  ".join(parts)


def final_test_lines(config: RunConfig, results: dict[str, Any]) -> list[str]:
    """The test split's metrics of a run with validation data: of the final model, and of the best one."""

    def shown(metrics: dict[str, float]) -> str:
        return metrics_text({k: v for k, v in metrics.items() if "/" not in k or k.endswith("/recall@1")})

    name = config.name or config.method
    if not config.eval.test:
        return [f"[{name}] test split not evaluated (eval.test: false)"]
    lines = [f"[{name}] test split, final model (epoch {config.optim.epochs}):  {shown(results['final'])}"]
    best = results.get("best")
    if best is not None:
        chosen = f"best by validation {best['metric']}, epoch {best['epoch']}"
        lines.append(f"[{name}] test split, {chosen}:  {shown(best['test'])}")
    return lines
