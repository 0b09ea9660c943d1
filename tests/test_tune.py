"""`metrictransfer tune`: space files, a tiny study and its files, resuming a killed study, pruning, worker
processes, K-fold trials, `--final` (the only place a study reads the test split) and what is refused.

Every study trains resnet10t on 7 glyph classes at 16 px for 1-2 epochs (about 1-2 s a trial on one core)."""

from __future__ import annotations

import contextlib
import copy
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from metrictransfer.cli import main
from metrictransfer.config import build_config
from metrictransfer.errors import ConfigError, MissingFileError, RunExistsError
from metrictransfer.formatting import percent
from metrictransfer.methods import METHODS
from metrictransfer.tuning import Pruning, load_space, run_study

TINY = {
    "method": "source",
    "threads": 1,
    "data": {
        "num_classes": 10,  # 10 training classes: 3 validate, 7 train
        "glyph_renders": 1,
        "classes_per_batch": 7,
        "images_per_class": 4,
        "views": 1,
        "image_size": 16,
        "validation": {"classes": 0.3},
    },
    "model": {"backbone": "resnet10t", "embedding_dim": 8},
    "optim": {"lr": 1e-3, "epochs": 2},
    "eval": {"recall_at": [1]},
}
SPACE = """\
optim.lr: {type: log_uniform, low: 1.0e-4, high: 1.0e-2}
model.embedding_dim: {type: categorical, choices: [8, 16]}
"""


@pytest.fixture(autouse=True)
def _threads():
    """Trials set torch's threads (the recipe's `threads`): restored for the tests that follow."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _write(folder: Path, recipe: dict | None = None, space: str = SPACE, **changes) -> tuple[Path, Path]:
    raw = copy.deepcopy(recipe or TINY)
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            raw.setdefault(section, {})[name] = value
        else:
            raw[section] = value
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(raw))
    (folder / "space.yaml").write_text(space)
    return folder / "recipe.yaml", folder / "space.yaml"


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")


def _peek(out: Path) -> tuple[dict[int, str], set[int]]:
    """Trial states and the trials with a heartbeat, read from the study's SQLite file read-only, while
    the study runs: opening it through optuna would create its tables, racing the study's own creation."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True, timeout=5)) as db:
            states = dict(db.execute("SELECT trial_id, state FROM trials").fetchall())
            beating = {row[0] for row in db.execute("SELECT trial_id FROM trial_user_attributes WHERE key = 'heartbeat'")}
    except sqlite3.OperationalError:  # not created yet, or locked for a moment
        return {}, set()
    return states, beating


def _states(out: Path) -> dict[int, str]:
    return {t.number: t.state.name for t in _study(out).get_trials(deepcopy=False)}


# ------------------------------------------------------------------------------------- space files

BAD_SPACES = {
    "unknown key": ("optim.lrr: {type: float, low: 0.1, high: 0.2}", "optim.lrr", "unknown key; allowed keys here: optimizer, lr"),
    "inverted range": ("optim.lr: {type: float, low: 0.2, high: 0.1}", "optim.lr", "low 0.2 must be below high 0.1"),
    "empty range": ("optim.epochs: {type: int, low: 3, high: 3}", "optim.epochs", "empty range"),
    "empty choices": ("model.embedding_dim: {type: categorical, choices: []}", "model.embedding_dim", "non-empty list"),
    "unknown type": ("optim.lr: {type: gaussian, low: 0.1, high: 0.2}", "optim.lr", "unknown type 'gaussian'"),
    "log range at zero": ("optim.lr: {type: log_uniform, low: 0, high: 0.1}", "optim.lr", "log range needs low > 0"),
    "int log range below zero": ("optim.epochs: {type: int, low: -1, high: 4, log: true}", "optim.epochs", "log range needs low > 0"),
    "missing field": ("optim.lr: {type: float, low: 0.1}", "optim.lr", "missing high"),
    "missing type": ("optim.lr: {low: 0.1, high: 0.2}", "optim.lr", "missing type"),
    "unknown field": ("optim.lr: {type: float, low: 0.1, high: 0.2, scale: 2}", "optim.lr", "unknown field scale"),
    "value the schema refuses": ("model.embedding_dim: {type: int, low: 0, high: 8}", "model.embedding_dim", "greater than or equal to 1"),
    "choice the schema refuses": (
        "data.transform: {type: categorical, choices: [glyphs, nope]}",
        "data.transform",
        "unknown transform 'nope'",
    ),
    "int range of fractions": ("optim.epochs: {type: int, low: 1.5, high: 4}", "optim.epochs", "whole number"),
    "step with a log range": ("optim.lr: {type: float, low: 0.1, high: 0.5, log: true, step: 0.1}", "optim.lr", "step cannot be combined"),
    "the validation split": ("data.validation.classes: {type: float, low: 0.1, high: 0.3}", "data.validation.classes", "cannot vary it"),
    "a key inside another": (
        "optim: {type: categorical, choices: [null]}\noptim.lr: {type: float, low: 0.1, high: 0.2}",
        "optim",
        "holds optim.lr",
    ),
    "not a range": ("optim.lr: 0.001", "optim.lr", "expected a range"),
    "a mapping as a choice": ("data.transform: {type: categorical, choices: [{a: 1}]}", "data.transform", "not a value or a list"),
}


@pytest.mark.parametrize("case", list(BAD_SPACES))
def test_bad_space_files_are_one_line_errors_naming_file_and_key(case, tmp_path):
    """Catches a space that would start trials with a misspelt key (silently ignored or failing every
    trial), an empty, inverted or unusable range, or an error that does not say where."""
    text, key, expected = BAD_SPACES[case]
    recipe, space = _write(tmp_path, space=text + "\n")
    with pytest.raises(ConfigError) as caught:
        load_space(space, yaml.safe_load(recipe.read_text()), str(recipe))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{space}: {key}") and expected in message, message


def test_space_file_errors_through_the_command_line(tmp_path, capsys):
    """The same errors from `metrictransfer tune`: one line, exit 2, nothing written; and a missing file."""
    recipe, space = _write(tmp_path, space="transfer.params.sigmaa: {type: float, low: 0.5, high: 2.0}\n")
    out = tmp_path / "study"
    assert main(["tune", str(recipe), "--space", str(space), "--trials", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "transfer.params.sigmaa" in err and str(space) in err, err
    assert not out.exists()
    with pytest.raises(MissingFileError, match="space file not found"):
        load_space(tmp_path / "nope.yaml", {})


def test_a_space_file_is_read_as_written(tmp_path):
    """1e-4 without a dot is a number (PyYAML reads it as text), old-layout keys reach their place, and
    each range keeps its type, log scale and step."""
    text = (
        "optim.lr: {type: log_uniform, low: 1e-4, high: 1e-2}\n"
        "transfer.params.sigma: {type: float, low: 0.5, high: 2.0, step: 0.5}\n"
        "optim.epochs: {type: int, low: 2, high: 8, log: true}\n"
        "model.embedding_dim: {type: categorical, choices: [16, 32]}\n"
        "eval.agreement_at: {type: categorical, choices: [[1], [1, 2]]}\n"  # a list key's values
    )
    recipe, space = _write(tmp_path, space=text, method="transfer", transfer={"source_checkpoint": "runs/source"})
    loaded = load_space(space, yaml.safe_load(recipe.read_text()))
    assert loaded.describe() == {
        "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "transfer.params.sigma": {"type": "float", "low": 0.5, "high": 2.0, "step": 0.5},
        "optim.epochs": {"type": "int", "low": 2, "high": 8, "log": True},
        "model.embedding_dim": {"type": "categorical", "choices": [16, 32]},
        "eval.agreement_at": {"type": "categorical", "choices": [[1], [1, 2]]},
    }
    assert loaded.max_epochs(2) == 8


def test_a_recipe_without_validation_is_refused(tmp_path, capsys):
    """Catches a study that would choose hyperparameters on the test split."""
    raw = copy.deepcopy(TINY)
    del raw["data"]["validation"]
    recipe, space = _write(tmp_path, raw)
    out = tmp_path / "study"
    assert main(["tune", str(recipe), "--space", str(space), "--trials", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "test split" in err and "data.validation: {classes: 0.2}" in err, err
    assert not out.exists()
    assert main(["tune", str(recipe), "--space", str(space), "--trials", "2", "--out", str(out), "--seeds", "1"]) == 2
    assert "--seeds are the seeds of the --final runs" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ a tiny study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Three trials of the tiny recipe, in this process."""
    folder = tmp_path_factory.mktemp("tune")
    recipe, space = _write(folder)
    out = folder / "study"
    threads = torch.get_num_threads()
    try:
        result = run_study(recipe, space, 3, out, seed=0)
    finally:
        torch.set_num_threads(threads)
    return recipe, space, out, result


@pytest.mark.slow
def test_a_study_writes_its_best_recipe_tables_and_plots(study, capsys, monkeypatch):
    """Catches a best.yaml that is not the best trial's recipe (or does not load), a value read from the
    wrong number (the test split, the last epoch), missing or incomplete tables and plots, and fractions
    where a person reads (best.yaml's header, trials.md, the command's summary; trials.csv keeps them)."""
    recipe, space, out, result = study
    assert result["trials"] == {"wanted": 3, "counted": 3, "complete": 3, "pruned": 0, "failed": 0}
    trials = _study(out).get_trials()
    best = max(trials, key=lambda t: t.value)
    assert result["best"]["trial"] == best.number and result["metric"] == "recall@1"
    for trial in trials:  # each trial an ordinary run folder, with the sampled values, its value its best validation epoch's
        folder = out / "trials" / f"trial-{trial.number:04d}"
        assert {"config.yaml", "log.csv", "checkpoint.pt", "results.json", "best.pt"} <= {p.name for p in folder.iterdir()}
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["optim"]["lr"] == pytest.approx(trial.params["optim.lr"])
        assert config["model"]["embedding_dim"] == trial.params["model.embedding_dim"]
        results = yaml.safe_load((folder / "results.json").read_text())
        assert results["selection"] == "validation"
        assert trial.value == results["best"]["validation"]["recall@1"]
    text = (out / "best.yaml").read_text()
    assert "the test split was not used to choose it" in text and f"Trial {best.number}: recall@1 {percent(best.value)}" in text
    loaded = build_config(yaml.safe_load(text))
    assert loaded.optim.lr == pytest.approx(best.params["optim.lr"]) and loaded.model.embedding_dim == best.params["model.embedding_dim"]
    assert loaded.data.validation is not None and loaded.data.validation.classes == 0.3  # the recipe's protocol, unchanged
    assert loaded.name is None and loaded.threads == 1
    rows = (out / "trials.csv").read_text().splitlines()
    assert rows[0] == "number,state,value,optim.lr,model.embedding_dim,seconds,note,folder" and len(rows) == 4
    assert {float(row.split(",")[2]) for row in rows[1:]} == {t.value for t in trials}  # fractions, as Optuna stores them
    markdown = (out / "trials.md").read_text()
    assert f"Best: trial {best.number}, recall@1 {percent(best.value)} (best.yaml)." in markdown
    for trial in trials:
        value = percent(trial.value) if trial.number != best.number else f"**{percent(trial.value)}**"
        assert f"| {trial.number} | complete | {value} |" in markdown
    monkeypatch.setattr("metrictransfer.tuning.study.train", lambda *a, **k: pytest.fail("a finished study trained again"))
    capsys.readouterr()
    assert main(["tune", str(recipe), "--space", str(space), "--trials", "3", "--out", str(out)]) == 0
    summary = capsys.readouterr().out.strip()
    assert summary == (
        f"{out}: 3/3 trials done (3 complete, 0 pruned, 0 failed); best trial {best.number}: recall@1 {percent(best.value)} "
        f"(validation); {out}/best.yaml"
    )
    for plot in ("history.png", "importances.png"):
        assert (out / plot).stat().st_size > 1000, plot


@pytest.mark.slow
def test_a_trial_folder_works_with_evaluate(study, capsys):
    _, _, out, result = study
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / result["best"]["folder"]), "--json"]) == 0
    assert "recall@1" in capsys.readouterr().out


@pytest.mark.slow
def test_rerunning_a_finished_study_trains_nothing_and_another_study_is_refused(study, monkeypatch):
    """Catches a rerun that starts more trials than asked, and a study folder silently reused for
    another recipe or space (its trials would be compared with the new ones')."""
    recipe, space, out, _ = study

    def no_training(*args, **kwargs):
        raise AssertionError("a finished study trained again")

    monkeypatch.setattr("metrictransfer.tuning.study.train", no_training)
    again = run_study(recipe, space, 3, out, overrides=["threads=2"])  # threads do not make another study
    assert again["trials"]["counted"] == 3 and len(_states(out)) == 3
    with pytest.raises(RunExistsError, match=r"holds another study \(recipe optim.epochs: 2 → 1\).*--overwrite") as caught:
        run_study(recipe, space, 3, out, overrides=["optim.epochs=1"])
    assert "\n" not in str(caught.value)
    other_space = space.parent / "other_space.yaml"
    other_space.write_text("optim.lr: {type: log_uniform, low: 1.0e-4, high: 1.0e-3}\n")
    with pytest.raises(RunExistsError, match="space model.embedding_dim; space optim.lr"):
        run_study(recipe, other_space, 3, out)
    with pytest.raises(RunExistsError, match="holds other files"):
        run_study(recipe, space, 3, recipe.parent)  # a folder of other things is never a study's


@pytest.mark.slow
def test_final_evaluates_the_test_split_once_per_seed(study, monkeypatch, capsys):
    """Catches final runs that keep the validation classes out of training, evaluate the test split every
    epoch (or select an epoch on it), or train again when rerun."""
    recipe, space, out, _ = study
    method = METHODS["source"]
    test_sets, test_evaluations = [], []
    real_set, real_evaluate = method.evaluation_set, method.evaluate

    def evaluation_set(self, config, holdout):
        found = real_set(self, config, holdout)
        test_sets.append(found)
        return found

    def evaluate(self, dataset, config, device, progress=False):
        if any(dataset is s or getattr(dataset, "dataset", None) is s for s in test_sets):  # its views kept (KeptViews)
            test_evaluations.append(config.seed)
        return real_evaluate(self, dataset, config, device, progress)

    monkeypatch.setattr(method, "evaluation_set", evaluation_set)
    monkeypatch.setattr(method, "evaluate", evaluate)
    result = run_study(recipe, space, 3, out, final_seeds=[0, 1])
    assert sorted(test_evaluations) == [0, 1]
    best = result["best"]
    for seed in (0, 1):
        run = out / "final" / f"seed-{seed}"
        config = build_config(yaml.safe_load((run / "config.yaml").read_text()))
        assert config.data.validation is None and config.eval.every == 0 and config.seed == seed
        assert config.optim.lr == pytest.approx(best["params"]["optim.lr"])
        log = (run / "log.csv").read_text().splitlines()
        header = log[0].split(",")
        assert [row.split(",")[header.index("recall@1")] != "" for row in log[1:]] == [False, True]  # only the last epoch
    final = result["final"]
    assert final["best_trial"] == best["trial"] and final["seeds"] == [0, 1]
    test = [final["runs"][s]["test"]["recall@1"] for s in ("0", "1")]
    assert final["mean"]["recall@1"] == pytest.approx(statistics.fmean(test))
    assert "± " in (out / "final.md").read_text() and (out / "final.json").is_file()
    assert f"validation data (recall@1 {percent(final['value'])})" in (out / "final.md").read_text()
    printed = capsys.readouterr().out
    for seed, value in zip((0, 1), test):
        assert f"final run, seed {seed}: test split recall@1 {percent(value)}" in printed, printed
    test_evaluations.clear()
    run_study(recipe, space, 3, out, final_seeds=[0, 1])  # finished final runs are kept, not retrained
    assert test_evaluations == []


# -------------------------------------------------------------------------------- pruning, workers


class Scripted(optuna.samplers.BaseSampler):
    """Trial n takes ``values[n]``: which trial holds the hopeless value is fixed."""

    def __init__(self, values: list[dict]) -> None:
        self.values = values

    def infer_relative_search_space(self, study, trial):
        return {}

    def sample_relative(self, study, trial, search_space):
        return {}

    def sample_independent(self, study, trial, name, distribution):
        return self.values[trial.number][name]


@pytest.mark.slow
def test_pruning_stops_a_hopeless_trial_after_its_first_epoch(tmp_path, monkeypatch, capsys):
    """Catches a pruner that is never told the validation metric, a pruned trial that trains on, and a
    pruned trial that is not counted. The hopeless learning rate's validation recall is set to 0 here, so
    that which trial is below the median does not depend on what two tiny runs happen to learn."""
    recipe, space = _write(tmp_path, space="optim.lr: {type: categorical, choices: [3.0e-3, 1.0e-9]}\n")
    method = METHODS["source"]
    real_evaluate = method.evaluate

    def evaluate(self, dataset, config, device, progress=False):
        metrics = real_evaluate(self, dataset, config, device, progress)
        return {k: 0.0 for k in metrics} if config.optim.lr < 1e-6 else metrics

    monkeypatch.setattr(method, "evaluate", evaluate)
    out = tmp_path / "study"
    sampler = Scripted([{"optim.lr": 3e-3}, {"optim.lr": 1e-9}])
    capsys.readouterr()
    result = run_study(recipe, space, 2, out, pruning=Pruning(startup=1, warmup=0), sampler=sampler)
    complete = _study(out).get_trials()[0].value
    lines = capsys.readouterr().out.splitlines()  # a line per trial, in percent as epoch lines (Optuna keeps fractions)
    assert lines[0].startswith(f"trial 0 complete: recall@1 {percent(complete)} | best {percent(complete)} (trial 0) | optim.lr=0.003 |")
    assert lines[1].startswith(f"trial 1 pruned after epoch 1 (recall@1 0.0%) | best {percent(complete)} (trial 0) | optim.lr=1e-09 |")
    assert result["trials"] == {"wanted": 2, "counted": 2, "complete": 1, "pruned": 1, "failed": 0}
    assert _states(out) == {0: "COMPLETE", 1: "PRUNED"}
    pruned = out / "trials" / "trial-0001"
    assert len((pruned / "log.csv").read_text().splitlines()) == 2  # header and epoch 1: epoch 2 never trained
    assert not (pruned / "results.json").exists()
    assert ",PRUNED,0.0," in (out / "trials.csv").read_text()
    assert "| 1 | pruned | 0.0% | 1e-09 |" in (out / "trials.md").read_text()
    assert "pruned after epoch 1: recall@1 0.0% is below the median" in (out / "trials.md").read_text()
    assert "importances.png not drawn: the space has a single key" in result["notes"]


@pytest.mark.slow
def test_a_killed_study_resumes_to_exactly_the_trials_asked(tmp_path):
    """SIGKILL while the second trial trains, then the same command again: the killed trial is failed
    (its process is gone) and not counted, and the study ends with exactly 3 counted trials, none left
    RUNNING. Catches a study that counts or waits for a dead trial, or starts over."""
    recipe, space = _write(tmp_path, optim__epochs=1)
    out = tmp_path / "study"
    command = [sys.executable, "-m", "metrictransfer.cli", "tune", str(recipe), "--space", str(space), "--trials", "3", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.3)
            states, beating = _peek(out)
            if "COMPLETE" in states.values() and any(states.get(t) == "RUNNING" for t in beating):
                break
        else:
            pytest.fail(f"the study never had a trial complete and one training: {process.stderr.read().decode()[-2000:]}")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    before = {t.number: (t.state.name, t.value) for t in _study(out).get_trials()}
    assert sorted(state for state, _ in before.values()) == ["COMPLETE", "RUNNING"], before
    result = run_study(recipe, space, 3, out)
    after = _study(out).get_trials()
    states = [t.state.name for t in after]
    assert states.count("COMPLETE") == 3 and "RUNNING" not in states and states.count("FAIL") == 1, states
    killed = next(t for t in after if t.state.name == "FAIL")
    assert killed.number == 1 and "which ended; not counted" in killed.user_attrs["note"]
    assert result["trials"]["counted"] == 3 and (after[0].state.name, after[0].value) == before[0]  # kept, not retrained


@pytest.mark.slow
def test_jobs_train_trials_in_worker_processes(tmp_path):
    """--jobs 2: two spawned workers share the SQLite study, each with cores // 2 threads. Catches a plan
    that cannot be sent to a worker process, workers asking for more trials than wanted, and a worker's
    failure lost."""
    recipe, space = _write(tmp_path, optim__epochs=1)
    out = tmp_path / "study"
    result = run_study(recipe, space, 2, out, jobs=2)
    trials = _study(out).get_trials()
    assert result["trials"]["counted"] == 2 and [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert {t.user_attrs["owner"]["pid"] for t in trials}.isdisjoint({os.getpid()})
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    for trial in trials:
        assert yaml.safe_load((out / trial.user_attrs["folder"] / "config.yaml").read_text())["threads"] == min(1, share)


@pytest.mark.slow
def test_a_k_fold_trial_is_the_mean_of_its_folds(tmp_path):
    """data.validation.folds: 2: each trial trains fold 0 and fold 1 (each validating on its own classes)
    in trial-NNNN/fold-k, and its value is their mean. Catches folds that repeat one split or a value of
    one fold only."""
    raw = copy.deepcopy(TINY)
    raw["data"]["validation"] = {"folds": 2}  # 5 classes validate, 5 train
    raw["data"]["classes_per_batch"] = 5
    raw["optim"]["epochs"] = 1
    recipe, space = _write(tmp_path, raw, space="optim.lr: {type: float, low: 1.0e-3, high: 2.0e-3}\n")
    out = tmp_path / "study"
    run_study(recipe, space, 1, out)
    (trial,) = _study(out).get_trials()
    values = []
    for fold in (0, 1):
        run = out / "trials" / "trial-0000" / f"fold-{fold}"
        assert yaml.safe_load((run / "config.yaml").read_text())["data"]["validation"]["fold"] == fold
        values.append(yaml.safe_load((run / "results.json").read_text())["best"]["validation"]["recall@1"])
    assert trial.value == pytest.approx(statistics.fmean(values)) and trial.user_attrs["fold_values"] == values


def test_the_guides_worked_example_is_a_valid_study():
    """docs/guides/tune.md's recipe validates on held-out classes and its space file loads against it (the
    docs tests parse its commands; a study of it takes minutes, so it runs by hand)."""
    root = Path(__file__).resolve().parents[1]
    recipe = root / "recipes" / "tune" / "glyphs_target.yaml"
    raw = yaml.safe_load(recipe.read_text())
    assert build_config(raw).data.validation is not None
    space = load_space(root / "recipes" / "tune" / "space_target.yaml", raw, str(recipe))
    assert space.keys == ["optim.lr", "metric_loss.params.margin", "model.embedding_dim"]
    assert "recipes/tune/space_target.yaml" in (root / "docs" / "guides" / "tune.md").read_text()


def test_validation_on_one_class_is_refused_before_any_trial_and_by_train(tmp_path, capsys):
    """Catches the issue's study: data.validation.classes=0.2 of 6 classes validated on one class, where
    recall is 1.0 whatever the model, and every trial scored 1.0 (or, refused only inside the first trial,
    a study folder left that the corrected recipe is refused in)."""
    recipe, space = _write(tmp_path, data={**TINY["data"], "num_classes": 6, "classes_per_batch": 4, "validation": {"classes": 0.2}})
    out = tmp_path / "study"
    assert main(["tune", str(recipe), "--space", str(space), "--trials", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    refusal = r"data\.validation\.classes=0\.2 holds out 1 of 6 training classes \(\d+ images\): recall on one class is 1\.0"
    assert err.count("\n") == 1 and re.search(refusal + r".*hold out at least 2 \(e\.g\. data\.validation\.classes=0\.34\)", err), err
    assert not out.exists()
    assert main(["train", str(recipe), "--out", str(tmp_path / "run")]) == 2  # one rule for both
    assert re.search(refusal, capsys.readouterr().err) and not (tmp_path / "run").exists()


def test_a_small_validation_split_is_warned_about_once_at_the_start(tmp_path):
    """Catches validation on a handful of classes (3 here) given without a word on how noisy it is."""
    from metrictransfer.tuning.run import check_validation

    with pytest.warns(UserWarning, match=r"data\.validation\.classes=0\.3 holds out 3 of 10 training classes .* noisy") as caught:
        check_validation(build_config(TINY))
    assert len(caught) == 1
