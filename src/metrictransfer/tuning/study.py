"""A study: Optuna trials, each an ordinary run of the recipe with sampled values, compared on validation data.

The study lives in an Optuna storage (``DIR/study.db`` by default, any database with ``--storage``), so a
killed study resumes by running the same command again, and workers on several machines can share one.
Workers are processes (``--jobs``), each asking the storage for a trial, training it and telling the result;
a trial's folder is ``DIR/trials/trial-NNNN``. Each trial records who runs it (host, boot, PID) and a
heartbeat, so that a trial left RUNNING by a killed process is failed, and not counted, when the study
starts again (at once on the same machine, after :data:`GRACE_SECONDS` without a heartbeat on another).
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import queue
import re
import shutil
import socket
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from metrictransfer.config import RunConfig, build_config, resume_differences
from metrictransfer.engine.callbacks import Callback
from metrictransfer.engine.interrupt import TrainingInterrupted
from metrictransfer.engine.results import selection_key
from metrictransfer.engine.trainer import train
from metrictransfer.errors import (
    ConfigError,
    MetricTransferError,
    MissingPackageError,
    OutputLocationError,
    RunExistsError,
    TrainingDivergedError,
)
from metrictransfer.formatting import percent
from metrictransfer.io import atomic_write_text
from metrictransfer.tuning.space import SearchSpace, set_key, with_values

try:
    import fcntl
except ImportError:  # Windows: the workers of one machine may then ask for one trial too many (failed as surplus)
    fcntl = None  # type: ignore[assignment]

try:
    import optuna
    from optuna.trial import TrialState
except ImportError:  # the optional extra: metrictransfer[tune]
    optuna = None  # type: ignore[assignment]

MANIFEST = "study.json"
DEFAULT_DB = "study.db"
# What a study writes into its folder: --overwrite deletes these and nothing else.
STUDY_FILES = (
    MANIFEST,
    DEFAULT_DB,
    f"{DEFAULT_DB}-journal",
    f"{DEFAULT_DB}-wal",
    f"{DEFAULT_DB}-shm",
    ".tune.lock",
    "trials",
    "final",
    "best.yaml",
    "trials.csv",
    "trials.md",
    "history.png",
    "importances.png",
    "final.md",
    "final.json",
)
HEARTBEAT_SECONDS = 30.0
# A RUNNING trial of another machine is taken for dead after this long without a heartbeat; one that
# never recorded who runs it (its process died between asking for it and saying so), after OWNERLESS_SECONDS.
GRACE_SECONDS = 600.0
OWNERLESS_SECONDS = 60.0
# A study stops when this many trials in a row fail (diverged); a configuration error stops it at once.
MAX_FAILURES_IN_A_ROW = 3
COUNTED = ("COMPLETE", "PRUNED")


def require_optuna() -> None:
    if optuna is None:
        raise MissingPackageError("metrictransfer tune needs Optuna: pip install 'metrictransfer[tune]' (or pip install optuna)")


@dataclass(frozen=True)
class Pruning:
    """Optuna's MedianPruner on each trial's validation metric, reported after every evaluated epoch: a
    trial stops when its best value so far is below the median of the earlier trials' values at the same
    epoch. ``startup``: completed trials before any is pruned; ``warmup``: epochs never pruned."""

    enabled: bool = True
    startup: int = 3
    warmup: int = 1

    def pruner(self) -> optuna.pruners.BasePruner:
        if not self.enabled:
            return optuna.pruners.NopPruner()
        return optuna.pruners.MedianPruner(n_startup_trials=self.startup, n_warmup_steps=self.warmup)


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs to run trials (picklable: ``--jobs`` workers are spawned processes)."""

    out: Path
    storage: str
    study_name: str
    recipe: dict[str, Any]  # the recipe as written, --set overrides applied
    recipe_name: str
    space: SearchSpace
    trials: int
    metric: str | None
    folds: int
    max_epochs: int
    threads: int | None
    pruning: Pruning
    seed: int
    progress: Literal["stdout", "stderr"] = "stdout"
    sampler: Any = None  # an Optuna sampler instead of the seeded TPE (Python API)
    parent: int | None = None  # a spawned worker's parent PID: the worker stops when it is orphaned

    def trial_config(self, values: dict[str, Any], number: int, fold: int) -> RunConfig:
        """The recipe with a trial's values, its name, the worker's threads and the selection metric."""
        raw = with_values(self.recipe, values)
        name = self.recipe.get("name")
        raw["name"] = f"{name}-trial-{number:04d}" if name else f"trial-{number:04d}"
        if self.folds > 1:
            set_key(raw, "data.validation.fold", fold)
            raw["name"] += f"-fold-{fold}"
        if self.threads is not None:
            raw["threads"] = self.threads
        set_key(raw, "eval.test", False)  # a trial never reads the test split (nor spends time on it)
        checkpoint = raw.get("checkpoint") or {}
        if self.metric is not None:
            set_key(raw, "checkpoint.best", self.metric)  # the run's best epoch is chosen by the metric tuned
        elif isinstance(checkpoint, dict) and "best" in checkpoint and checkpoint["best"] is None:
            set_key(raw, "checkpoint.best", "auto")  # a trial's value is read at its best validation epoch
        shown = ", ".join(f"{k}={_short(v)}" for k, v in values.items())
        return build_config(raw, origin=f"trial {number} ({shown})")

    def echo(self, line: str) -> None:
        print(line, file=sys.stderr if self.progress == "stderr" else sys.stdout, flush=True)


# ------------------------------------------------------------------------------- the folder and storage


def claim_study_folder(out: Path, identity: dict[str, Any], url: str, name: str, overwrite: bool) -> None:
    """Make ``out`` this study's folder: a new or empty folder, or one holding this very study (same
    recipe, space and metric, same storage), which then continues. Another study, or anything else, is
    refused; ``overwrite`` deletes another study's files (and only those) first."""
    if out.exists() and not out.is_dir():
        raise OutputLocationError(f"{out} is a file, not a folder; give a folder for the study (--out)")
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            saved = json.loads(manifest.read_text(encoding="utf-8"))
        except ValueError:  # damaged (or not UTF-8): judged as another study's
            saved = {}
        if not isinstance(saved, dict):
            saved = {}
        differences = identity_differences(saved.get("identity") or {}, identity)
        if saved.get("storage") != redacted(url) or saved.get("study_name") != name:
            differences.append(f"storage: {saved.get('storage')} (study {saved.get('study_name')!r})")
        if differences and not overwrite:
            raise RunExistsError(
                f"{out} holds another study ({'; '.join(differences[:3])}); give another --out, or add --overwrite "
                "to delete its trials and start anew"
            )
        if overwrite:
            remove_study_files(out)
    elif out.is_dir() and any(out.iterdir()):
        others = sorted(p.name for p in out.iterdir() if p.name not in STUDY_FILES)
        if others:
            raise RunExistsError(f"{out} holds other files ({', '.join(others[:3])}) and no study; give a new or empty folder (--out)")
        if not overwrite:
            raise RunExistsError(f"{out} holds the files of a study without its {MANIFEST}; add --overwrite to delete them and start anew")
        remove_study_files(out)
    out.mkdir(parents=True, exist_ok=True)
    if not manifest.is_file():
        record = {"format": 1, "study_name": name, "storage": redacted(url), "identity": identity}
        atomic_write_text(json.dumps(record, indent=2), manifest)


def identity_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What makes two studies different: the recipe (but for keys that only change how runs run, such
    as threads), the space and the metric."""
    found = []
    if saved.get("config") is not None:
        found += [f"recipe {d}" for d in resume_differences(saved["config"], current["config"])]
    else:
        found.append("no recipe recorded")
    if saved.get("space") != current["space"]:
        keys = sorted(set(saved.get("space") or {}) | set(current["space"]))
        found += [f"space {k}" for k in keys if (saved.get("space") or {}).get(k) != current["space"].get(k)]
    if saved.get("metric") != current["metric"]:
        found.append(f"metric {saved.get('metric')} → {current['metric']}")
    return found


def remove_study_files(out: Path) -> None:
    for name in STUDY_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def redacted(url: str) -> str:
    """A storage URL without its password (study.json and --json output are not secrets' places)."""
    return re.sub(r"(//[^:/@]+:)[^@]*@", r"\1***@", url)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage; SQLite waits for the other workers' writes instead of failing at once."""
    require_optuna()
    engine: dict[str, Any] = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except (ImportError, ValueError) as err:  # an unknown dialect or a missing driver (psycopg2, ...)
        raise ConfigError(f"--storage {redacted(url)}: {str(err).splitlines()[0]}") from None


IDENTITY_ATTR = "metrictransfer"


def open_study(storage: optuna.storages.RDBStorage, name: str, identity: dict[str, Any], overwrite: bool) -> optuna.Study:
    """Create the study, or load it when its recorded identity is this one; another study of that name is
    refused. ``overwrite`` deletes the study of that name first (a --storage of one's own: the default
    file was deleted with the folder's other files)."""
    try:
        if overwrite and name in {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}:
            optuna.delete_study(study_name=name, storage=storage)
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True)
    except Exception as err:  # the database cannot be reached
        raise ConfigError(f"cannot open study {name!r} in {redacted(storage.url)}: {str(err).splitlines()[0]}") from None
    saved = study.user_attrs.get(IDENTITY_ATTR)
    if saved is None and not study.trials:
        study.set_user_attr(IDENTITY_ATTR, identity)
        return study
    differences = identity_differences(saved or {}, identity) if saved is not None else ["it was not created by metrictransfer tune"]
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE]:
        differences.append("its direction is not maximize")
    if differences:
        raise RunExistsError(
            f"the storage already holds a study {name!r} that differs ({'; '.join(differences[:3])}); give another "
            "--study-name, or add --overwrite to delete it"
        )
    return study


# ------------------------------------------------------------------------------- who runs a trial


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def _process_state(pid: int) -> tuple[str, str] | None:
    """(state letter, start time) of a process from /proc, or None when it does not exist there."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], fields[19]


def owner() -> dict[str, Any]:
    """This process, as recorded on the trials it runs."""
    state = _process_state(os.getpid())
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": os.getpid(), "started": state[1] if state else None}


def owner_alive(record: dict[str, Any]) -> bool | None:
    """Whether the process that ran a trial still runs; None when it ran on another machine (or boot)."""
    if record.get("host") != socket.gethostname() or record.get("boot") != _boot_id():
        return None
    pid = int(record.get("pid", 0))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    if not Path("/proc").is_dir():
        return True
    state = _process_state(pid)
    # gone, a zombie (killed, not yet reaped), or the PID reused by a later process
    return state is not None and state[0] != "Z" and (record.get("started") is None or state[1] == record.get("started"))


def fail_stale_trials(study: optuna.Study, storage: optuna.storages.RDBStorage) -> list[tuple[int, str]]:
    """Fail the RUNNING trials whose process has ended (this machine) or whose heartbeat stopped more than
    GRACE_SECONDS ago (another machine): they are not counted, and their numbers are not reused."""
    failed = []
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        record = trial.user_attrs.get("owner") or {}
        alive = owner_alive(record) if record else None
        if alive is None:
            beat = trial.user_attrs.get("heartbeat") or (trial.datetime_start.timestamp() if trial.datetime_start else 0.0)
            alive = time.time() - float(beat) < (GRACE_SECONDS if record else OWNERLESS_SECONDS)
        if alive:
            continue
        who = f"PID {record.get('pid')} on {record.get('host')}" if record else "a process"
        note = f"left running by {who}, which ended; not counted"
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # another worker failed it first
            storage.set_trial_user_attr(trial_id, "note", note)
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            failed.append((trial.number, note))
    return failed


class Heartbeat:
    """A thread recording the trial's ``heartbeat`` (Unix time) every HEARTBEAT_SECONDS while it trains."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="tune-heartbeat", daemon=True)

    def _beat(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is not worth a trial: the next one follows
                self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())
            if self.stop.wait(HEARTBEAT_SECONDS):
                return

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@contextlib.contextmanager
def ask_lock(out: Path) -> Iterator[None]:
    """The workers of one machine ask for trials one at a time, so that they never start more than asked."""
    if fcntl is None:
        yield
        return
    fd = os.open(out / ".tune.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ------------------------------------------------------------------------------------------ workers


def counts(study: optuna.Study) -> dict[str, int]:
    found = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        found[trial.state.name] += 1
    found["counted"] = sum(found[s] for s in COUNTED)
    return found


def _sampler(plan: Plan, worker: int, existing: int) -> optuna.samplers.BaseSampler:
    """The seeded TPE sampler; each worker, and each invocation of a resumed study, draws its own stream
    (the same seed would repeat the first trials' random draws)."""
    if plan.sampler is not None:
        return plan.sampler  # type: ignore[no-any-return]
    import numpy as np

    seed = int(np.random.SeedSequence([plan.seed, worker, existing]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=seed)


def work(plan: Plan, worker: int) -> None:
    """Ask for trials and run them until the study has ``plan.trials`` finished (or running) ones."""
    storage = open_storage(plan.storage)
    study = optuna.load_study(study_name=plan.study_name, storage=storage, pruner=plan.pruning.pruner())
    study.sampler = _sampler(plan, worker, len(study.get_trials(deepcopy=False)))
    failures = 0
    while True:
        with ask_lock(plan.out):
            fail_stale_trials(study, storage)
            found = counts(study)
            if found["counted"] + found["RUNNING"] >= plan.trials:
                return
            trial = study.ask()
            trial.set_user_attr("owner", owner())
        if _surplus(study, trial.number, plan.trials):  # another machine asked at the same moment
            trial.set_user_attr("note", "asked beyond the trials wanted (several workers at once); not counted")
            study.tell(trial, state=TrialState.FAIL)
            continue
        state = run_trial(plan, study, storage, trial)
        failures = failures + 1 if state == TrialState.FAIL else 0
        if failures >= MAX_FAILURES_IN_A_ROW:
            last = study.trials[trial.number].user_attrs.get("note", "")
            raise ConfigError(f"{failures} trials in a row failed, the last with: {last}; see {plan.out / 'trials.md'}")


def _surplus(study: optuna.Study, number: int, wanted: int) -> bool:
    live = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
    return sum(1 for t in study.get_trials(deepcopy=False, states=live) if t.number < number) >= wanted


class PruneCallback(Callback):
    """Reports the selection metric of each validation epoch to the trial, and stops a trial the pruner
    gives up on (``optuna.TrialPruned`` leaves ``train``, the run folder keeping what it trained). K-fold:
    fold k's epoch e (0-based) is step ``k * max_epochs + e``, so trials are compared fold by fold, epoch by epoch."""

    def __init__(self, trial: optuna.trial.Trial, offset: int, parent: int | None) -> None:
        self.trial, self.offset, self.parent = trial, offset, parent
        self.metric: str | None = None

    def on_step_end(self, trainer: Any, step: int, logs: dict[str, float]) -> None:
        if self.parent is not None and os.getppid() != self.parent:
            raise Orphaned("the tune process that started this worker ended")

    def on_epoch_end(self, trainer: Any, epoch: int, row: dict[str, Any]) -> None:
        if row.get("evaluated_on") != "validation":
            return
        self.metric = selection_key(trainer.config, trainer.method.output, trainer.history)
        self.trial.report(float(row[self.metric]), self.offset + epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}: {self.metric} {percent(row[self.metric])} is below the median")


class StudyInterrupted(TrainingInterrupted):
    """Ctrl-C or SIGTERM during a trial: the trial is failed (not counted) and the study stops; the
    command line says how to continue the study, not the trial's run (exit status 128 + the signal's)."""

    def __init__(self, signal_name: str, trial: int, out: Path) -> None:
        self.signal_name, self.step, self.checkpoint = signal_name, 0, out
        KeyboardInterrupt.__init__(
            self, f"{signal_name}: trial {trial} stopped and failed (not counted); the same tune command continues the study in {out}"
        )


class Orphaned(Exception):
    """A spawned worker whose parent (the ``tune`` command) is gone: it stops instead of training on alone."""


def run_trial(plan: Plan, study: optuna.Study, storage: optuna.storages.RDBStorage, trial: optuna.trial.Trial) -> TrialState:
    """Train one trial (one run, or one per fold), tell the study its value, print its line."""
    started = time.perf_counter()
    values = plan.space.suggest(trial)
    folder = plan.out / "trials" / f"trial-{trial.number:04d}"
    trial.set_user_attr("folder", str(folder.relative_to(plan.out)))
    state, value, note, metric = TrialState.COMPLETE, math.nan, "", plan.metric
    fold_values: list[float] = []
    callback: PruneCallback | None = None
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(plan.study_name), trial.number)
    try:
        with Heartbeat(storage, trial_id), contextlib.redirect_stdout(sys.stderr):  # epoch lines: stderr
            for fold in range(plan.folds):
                config = plan.trial_config(values, trial.number, fold)
                run = folder if plan.folds == 1 else folder / f"fold-{fold}"
                callback = PruneCallback(trial, fold * plan.max_epochs, plan.parent)
                try:
                    results = train(config, run, progress=False, overwrite=True, extra_callbacks=[callback])
                except ValueError as err:
                    if str(err).startswith("checkpoint.best:") and plan.metric is not None:
                        raise ConfigError(f"--metric {plan.metric}: {err}") from None
                    raise
                metric, fold_value = trial_value(results, run)
                fold_values.append(fold_value)
        value = statistics.fmean(fold_values)
    except optuna.TrialPruned as pruned:
        state, note = TrialState.PRUNED, str(pruned)
        metric = (callback.metric if callback is not None else None) or metric
    except TrainingDivergedError as err:  # a bad value of the space, not a broken study: the next trial tries another
        state, note = TrialState.FAIL, str(err)
    except (KeyboardInterrupt, Orphaned) as stop:
        signal_name = stop.signal_name if isinstance(stop, TrainingInterrupted) else "Ctrl-C" if isinstance(stop, KeyboardInterrupt) else ""
        _finish(study, trial, TrialState.FAIL, None, f"interrupted ({signal_name or stop}); not counted", started, metric, fold_values)
        if isinstance(stop, TrainingInterrupted):
            raise StudyInterrupted(stop.signal_name, trial.number, plan.out) from None
        raise
    except BaseException as err:
        _finish(study, trial, TrialState.FAIL, None, str(err).splitlines()[0] if str(err) else type(err).__name__, started, metric, [])
        raise
    finished = _finish(study, trial, state, value if state == TrialState.COMPLETE else None, note, started, metric, fold_values)
    plan.echo(progress_line(study, finished, plan.trials))
    return state


def trial_value(results: dict[str, Any], run: Path) -> tuple[str, float]:
    """(metric key, value) of a run: its selection metric at its best validation epoch."""
    best = results.get("best")
    if not isinstance(best, dict) or "validation" not in best:
        raise ConfigError(f"{run / 'results.json'} has no best validation epoch (results['best']); was data.validation removed?")
    key = best["metric"]
    return key, float(best["validation"][key])


def _finish(
    study: optuna.Study,
    trial: optuna.trial.Trial,
    state: TrialState,
    value: float | None,
    note: str,
    started: float,
    metric: str | None,
    fold_values: list[float],
) -> optuna.trial.FrozenTrial:
    trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
    if metric:
        trial.set_user_attr("metric", metric)
    if note:
        trial.set_user_attr("note", note)
    if len(fold_values) > 1:
        trial.set_user_attr("fold_values", fold_values)
    return study.tell(trial, value, state=state)


def progress_line(study: optuna.Study, trial: optuna.trial.FrozenTrial, wanted: int) -> str:
    """One line per finished trial: its state and value, the best so far (in percent, as epoch lines; the
    storage keeps fractions), its values, its time."""
    metric = trial.user_attrs.get("metric") or "value"
    if trial.state == TrialState.COMPLETE:
        what = f"complete: {metric} {percent(float(trial.value or 0))}"  # a complete trial's: never None
    elif trial.state == TrialState.PRUNED:
        last = f" ({metric} {percent(trial.value)})" if trial.value is not None else ""
        what = f"{trial.user_attrs.get('note', 'pruned').split(':')[0]}{last}"
    else:
        what = f"failed: {trial.user_attrs.get('note', '')}"
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    best = max(complete, key=lambda t: float(t.value or -math.inf), default=None)
    best_text = f"best {percent(float(best.value or 0))} (trial {best.number})" if best is not None else "no trial complete yet"
    shown = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    done = counts(study)["counted"]
    return f"trial {trial.number} {what} | {best_text} | {shown} | {trial.user_attrs.get('seconds', 0):.1f} s | {done}/{wanted} done"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------- worker processes


def run_workers(plan: Plan, jobs: int) -> None:
    """``jobs`` spawned processes, each running :func:`work`; the first expected error any of them met is
    raised here once all have ended (each stops at its next trial: the study is shared)."""
    context = multiprocessing.get_context("spawn")  # no fork of a process that has loaded torch
    errors: Any = context.Queue()
    worker_plan = _with_parent(plan, os.getpid())
    processes = [context.Process(target=_worker_main, args=(worker_plan, w, errors), name=f"tune-worker-{w}") for w in range(jobs)]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:  # Ctrl-C reaches every worker too: each fails its trial and ends
        for process in processes:
            process.join()
        raise
    problems = []
    with contextlib.suppress(queue.Empty):
        while True:
            problems.append(errors.get(timeout=0.5))
    for problem in problems:
        if isinstance(problem, BaseException):
            raise problem
    if problems:
        raise RuntimeError(f"a tune worker failed: {problems[0]}")
    if any(p.exitcode == 130 for p in processes):
        raise KeyboardInterrupt


def _with_parent(plan: Plan, parent: int) -> Plan:
    return replace(plan, parent=parent)


def _worker_main(plan: Plan, worker: int, errors: Any) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        work(plan, worker)
    except (KeyboardInterrupt, TrainingInterrupted, Orphaned):
        sys.exit(130)
    except MetricTransferError as err:
        errors.put(_picklable(err))
        sys.exit(err.exit_status)
    except Exception as err:
        traceback.print_exc()
        errors.put(f"{type(err).__name__}: {err}")
        sys.exit(1)


def _picklable(err: MetricTransferError) -> BaseException | str:
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return str(err)
