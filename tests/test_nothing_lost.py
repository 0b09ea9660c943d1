"""Nothing lost, part two: output folders hold only what the tool wrote, and every case of a careless or
unlucky user ends in one line, the right exit status, and every file that is not the tool's byte-identical.

The cases of damaged inputs, settings and full disks are in ``test_nothing_lost_inputs.py`` and
``test_nothing_lost_disk.py``; ``test_bad_inputs.py`` holds part one.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import pytest
import yaml

from metrictransfer.cli import main
from metrictransfer.config import build_config
from metrictransfer.engine import trainer
from metrictransfer.engine.callbacks import Callback
from metrictransfer.engine.interrupt import TrainingInterrupted
from metrictransfer.errors import BadImageError, RunLockedError
from metrictransfer.output_folder import MANIFEST_NAME, Manifest
from metrictransfer.retrieval.gallery import IndexLock
from metrictransfer.runtime.checkpoint import load_checkpoint
from tests import helpers
from tests.helpers import TINY

pytestmark = pytest.mark.slow  # every test here trains a model (or uses a run trained for the module)

STEPS_PER_EPOCH = 22
GALLERY = Path(__file__).resolve().parent.parent / "examples" / "gallery"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    (root / "recipe.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["train", str(root / "recipe.yaml"), "--out", str(root / "run")]) == 0
    return root


@pytest.fixture()
def work(finished, tmp_path) -> Path:
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    return tmp_path


def snapshot(folder: Path) -> dict[str, str]:
    return helpers.snapshot(folder, folders=True)


def one_line(capsys, status: int, code: int, pattern: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == status, err
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("metrictransfer: "), err
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def a_persons_folder(folder: Path) -> Path:
    """A folder of someone's own files, with names a run also writes and another tool's subfolders."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "tensorboard").mkdir()
    (folder / "report.md").write_text("# my notes\n")
    (folder / "log.csv").write_text("day,weight\n1,70\n")
    (folder / "checkpoints" / "epoch-3.ckpt").write_bytes(b"another tool's weights")
    (folder / "tensorboard" / "events.out").write_bytes(b"another tool's events")
    return folder


# ------------------------------------------------------------------------------------------ run folders


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "--overwrite"])
def test_a_folder_of_someone_elses_files_is_refused_and_left_as_it_was(work, capsys, overwrite):
    """Catches: a report.md or log.csv of a person's own written over; --overwrite deleting another tool's
    checkpoints/ and tensorboard/; a .lock or manifest left in their folder by the refusal."""
    theirs = a_persons_folder(work / "theirs")
    before = snapshot(theirs)
    code = main(["train", str(work / "recipe.yaml"), "--out", str(theirs)] + (["--overwrite"] if overwrite else []))
    one_line(capsys, 2, code, r"theirs holds files metrictransfer did not write \(checkpoints, log\.csv, report\.md, tensorboard\)")
    assert snapshot(theirs) == before and not (theirs / ".lock").exists() and not (theirs / MANIFEST_NAME).exists()


def test_a_demo_over_someone_elses_files_is_refused_even_with_overwrite(work, capsys):
    """Catches: demo --overwrite writing its report.md and log.csv over a person's."""
    theirs = a_persons_folder(work / "theirs")
    before = snapshot(theirs)
    code = main(["demo", "--out", str(theirs), "--overwrite", "--epochs-scale", "0.01"])
    one_line(capsys, 2, code, r"theirs holds files metrictransfer did not write")
    assert snapshot(theirs) == before and not (theirs / ".lock").exists()


def test_an_empty_folder_is_taken_and_the_manifest_lists_what_the_run_wrote(work):
    (work / "empty").mkdir()
    assert main(["train", str(work / "recipe.yaml"), "--out", str(work / "empty")]) == 0
    manifest = Manifest.read(work / "empty")
    assert manifest is not None and manifest.kind == "run"
    on_disk = {p.name for p in (work / "empty").iterdir()} - {".lock", MANIFEST_NAME}
    assert set(manifest.files) == on_disk >= {"config.yaml", "checkpoint.pt", "checkpoints", "results.json", "log.csv", "report.md"}
    assert "sha256" in manifest.files["results.json"] and "sha256" not in manifest.files["checkpoint.pt"]


def test_overwrite_deletes_the_runs_files_and_keeps_a_persons(work, capsys):
    """Catches: --overwrite deleting files a person added to a run folder (a note, a folder of plots),
    or leaving the old run's kept checkpoints to be mixed with the new run's."""
    run = work / "run"
    (run / "notes.txt").write_text("lr 1e-3 was too high")
    (run / "my plots").mkdir()
    (run / "my plots" / "a.png").write_bytes(b"png")
    old_kept = {p.name for p in (run / "checkpoints").iterdir()}
    assert main(["train", str(work / "recipe.yaml"), "--out", str(run), "--overwrite", "--set", "checkpoint.every_steps=7"]) == 0
    assert (run / "notes.txt").read_text() == "lr 1e-3 was too high" and (run / "my plots" / "a.png").read_bytes() == b"png"
    kept = {p.name for p in (run / "checkpoints").iterdir()}
    assert kept == {"step-000000014.pt", "step-000000021.pt", "step-000000022.pt"} and kept != old_kept
    assert "notes.txt" not in Manifest.read(run).files


def test_a_run_of_an_earlier_version_resumes_and_is_not_overwritten_blindly(work, capsys):
    """A run folder without a manifest (written before manifests existed): --resume continues it and
    records its files; --overwrite cannot tell its files from a person's and refuses."""
    run = work / "run"
    (run / MANIFEST_NAME).unlink()
    before = snapshot(run)
    code = main(["train", str(work / "recipe.yaml"), "--out", str(run), "--overwrite"])
    one_line(capsys, 2, code, r"written before metrictransfer recorded the files it writes.*delete the folder yourself")
    assert snapshot(run) == before
    assert main(["train", "--resume", str(run)]) == 0
    assert "already finished" in capsys.readouterr().out
    (run / "results.json").unlink()  # unfinished: the resume trains, then records what the run holds
    assert main(["train", "--resume", str(run)]) == 0
    assert {"config.yaml", "results.json", "checkpoints"} <= set(Manifest.read(run).files)


@pytest.mark.parametrize("command", ["train", "index"])
def test_an_output_inside_a_run_is_refused(work, capsys, command):
    """Catches: a run or an index written inside another run, which an --overwrite of either would delete."""
    before = snapshot(work / "run")
    inner = work / "run" / "checkpoints" / "inner"
    if command == "train":
        code = main(["train", str(work / "recipe.yaml"), "--out", str(inner)])
    else:
        code = main(["index", "--checkpoint", str(work / "run"), "--images", str(GALLERY), "--out", str(inner)])
    one_line(capsys, 2, code, r"inner is inside a run \(.*run\); choose a folder outside it with --out")
    assert snapshot(work / "run") == before


def test_the_lock_is_held_until_the_report_is_written(work, monkeypatch):
    """Catches: the lock released before report.md is written, so an --overwrite started then deletes a
    run that is still writing."""
    from metrictransfer import report
    from metrictransfer.engine.run_folder import RunLock

    seen = []

    def write_report_while_checking(run):
        with pytest.raises(RunLockedError, match="in use by another training"):
            RunLock(run).acquire()
        seen.append(run)
        (Path(run) / "report.md").write_text("report")

    monkeypatch.setattr(report, "write_report", write_report_while_checking)
    assert main(["train", str(work / "recipe.yaml"), "--out", str(work / "new")]) == 0
    assert seen and "report.md" in Manifest.read(work / "new").files


def test_an_edited_results_file_is_named_not_reported(finished, work, capsys):
    """Catches: a results.json edited by hand (still valid JSON, a better recall) turned into a report."""
    results = work / "run" / "results.json"
    data = json.loads(results.read_text())
    data["final"]["recall@1"] = 0.99
    results.write_text(json.dumps(data))
    report_before = (work / "run" / "report.md").read_bytes()
    code = main(["report", str(work / "run")])
    one_line(capsys, 2, code, r"results\.json is not the file metrictransfer wrote \(its SHA-256 differs .*edited or damaged")
    assert (work / "run" / "report.md").read_bytes() == report_before
    one_line(capsys, 2, main(["table", str(work)]), r"results\.json is not the file metrictransfer wrote")
    assert main(["train", "--resume", str(work / "run")]) == 0  # what the message advises: rebuilt from the checkpoint
    assert json.loads(results.read_text())["final"] == json.loads((finished / "run" / "results.json").read_text())["final"]
    assert main(["report", str(work / "run")]) == 0


def test_a_damaged_manifest_is_named(work, capsys):
    (work / "run" / MANIFEST_NAME).write_text("{not json")
    before = snapshot(work / "run")
    code = main(["train", str(work / "recipe.yaml"), "--out", str(work / "run"), "--overwrite"])
    one_line(capsys, 2, code, r"\.metrictransfer\.json \(metrictransfer's record of the files it wrote there\) is damaged")
    assert snapshot(work / "run") == before


# ------------------------------------------------------------------------------------------------ indexes


def test_an_index_goes_only_into_a_new_folder_or_over_an_index_with_overwrite(work, capsys):
    """Catches: index --out onto a person's folder replacing its files; a second build over an index
    silently replacing it."""
    theirs = a_persons_folder(work / "theirs")
    before = snapshot(theirs)
    build = ["index", "--checkpoint", str(work / "run"), "--images", str(GALLERY), "--out"]
    one_line(capsys, 2, main(build + [str(theirs)]), r"theirs holds files metrictransfer did not write")
    assert snapshot(theirs) == before and not (theirs / ".lock").exists()
    assert main(build + [str(work / "index")]) == 0
    capsys.readouterr()
    built = snapshot(work / "index")
    one_line(capsys, 2, main(build + [str(work / "index")]), r"index already holds a search index; .*add --overwrite to replace it")
    assert snapshot(work / "index") == built
    (work / "index" / "README.txt").write_text("the gallery of 3 December")
    assert main(build + [str(work / "index"), "--overwrite"]) == 0
    assert (work / "index" / "README.txt").read_text() == "the gallery of 3 December"
    one_line(capsys, 2, main(["train", str(work / "recipe.yaml"), "--out", str(work / "index")]), r"holds a search index, not a run")


def test_two_index_builds_into_one_folder_one_is_refused(work, capsys):
    with IndexLock(work / "busy"):
        code = main(["index", "--checkpoint", str(work / "run"), "--images", str(GALLERY), "--out", str(work / "busy")])
    one_line(capsys, 2, code, r"busy is in use by another index build \(PID \d+")


# ------------------------------------------------------------------------------------------------ signals


class SignalInLastStep(Callback):
    """Sends ``sig`` to this process after the last step of the run, past the point where a step checks
    for one: the case a run used to ignore (it evaluated, reported and exited 0)."""

    def __init__(self, sig: int) -> None:
        self.sig = sig

    def on_step_end(self, trainer, step, logs) -> None:
        if trainer.epoch == trainer.config.optim.epochs - 1 and trainer.done == trainer.steps_per_epoch:
            signal.raise_signal(self.sig)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_in_the_last_step_saves_and_skips_evaluation_and_report(work, capsys, monkeypatch, sig):
    original = trainer.default_callbacks
    monkeypatch.setattr(trainer, "default_callbacks", lambda *a, **k: original(*a, **k) + [SignalInLastStep(sig)])
    run = work / "stopped"
    code = main(["train", str(work / "recipe.yaml"), "--out", str(run)])
    err = capsys.readouterr().err
    assert code == 128 + sig and "Traceback" not in err, err
    assert f"continue with metrictransfer train --resume {run}" in err.splitlines()[-1]
    assert not (run / "results.json").exists() and not (run / "report.md").exists()
    state = load_checkpoint(run)
    assert state["step"] == STEPS_PER_EPOCH and (state["position"]["epoch"], state["position"]["batches_done"]) == (0, STEPS_PER_EPOCH)
    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "results.json").read_text())["epochs"] == 1 and (run / "report.md").is_file()


def test_a_signal_while_the_results_are_written_keeps_the_run_and_skips_the_report(work, capsys, monkeypatch):
    class SignalAtFitEnd(Callback):
        def on_fit_end(self, trainer, results) -> None:
            signal.raise_signal(signal.SIGTERM)

    original = trainer.default_callbacks
    monkeypatch.setattr(trainer, "default_callbacks", lambda *a, **k: [SignalAtFitEnd()] + original(*a, **k))
    run = work / "late"
    code = main(["train", str(work / "recipe.yaml"), "--out", str(run)])
    line = one_line(capsys, 128 + signal.SIGTERM, code, r"SIGTERM: the run itself is finished and saved")
    assert f"metrictransfer report {run}" in line
    assert (run / "results.json").is_file() and not (run / "report.md").exists()
    assert main(["report", str(run)]) == 0 and (run / "report.md").is_file()


def test_the_library_raises_the_interruption_with_its_exit_status(tmp_path):
    config = build_config(TINY)
    with pytest.raises(TrainingInterrupted) as stopped:
        trainer.train(config, tmp_path / "run", progress=False, extra_callbacks=[SignalInLastStep(signal.SIGINT)])
    assert stopped.value.exit_status == 130 and stopped.value.step == STEPS_PER_EPOCH


# ------------------------------------------------------------------------------------------ a lost process


def _worker_of_rank(rank: int, out: Path) -> int | None:
    """The PID of the torchrun worker of ``rank`` training into ``out`` (read from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"metrictransfer.cli" in command and str(out).encode() in command:
            if b"torch.distributed.run" not in command:
                return int(entry.name)
    return None


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker through /proc")
def test_a_killed_process_ends_the_others_with_one_line(tmp_path):
    """Catches: the surviving process of a two-process run ending in gloo's traceback when the other is
    killed (out of memory, a node lost)."""
    import os
    import subprocess
    import sys
    import time

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "optim": {"lr": 1e-3, "epochs": 30}, "checkpoint": {"every_steps": 5}, "threads": 1}))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "metrictransfer.cli"]
    process = subprocess.Popen(
        command + ["train", str(recipe), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 240
    while not (out / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    victim = _worker_of_rank(1, out)
    assert victim is not None, process.communicate(timeout=60)
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=240)
    ours = [line for line in stderr.splitlines() if line.startswith("metrictransfer: ") or "[rank0]" in line]  # not torchrun's
    assert len(ours) == 1, stdout[-2000:] + stderr[-3000:]
    assert re.match(r"metrictransfer: error: process 0 of 2: another process of this run ended or stopped answering \(", ours[0])
    assert f"`metrictransfer train --resume {out}`" in ours[0]
    assert load_checkpoint(out)["step"] >= 5  # the last checkpoint is whole


def test_a_sigterm_held_back_before_training_stops_the_first_step(monkeypatch):
    """Catches: under torchrun, a SIGTERM (torchrun's, when another process failed) killing a process in its
    start-up or its clean-up before it says what happened; or one held back and then forgotten."""
    from metrictransfer.engine import interrupt

    monkeypatch.setattr(interrupt, "_deferred", [])
    previous = signal.getsignal(signal.SIGTERM)
    try:
        interrupt.defer_termination()
        signal.raise_signal(signal.SIGTERM)  # the process lives on
        with interrupt.GracefulStop() as stop:
            assert stop.requested and stop.signal_name == "SIGTERM"
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_start_that_failed_before_its_first_checkpoint_can_be_started_again(work, capsys, monkeypatch):
    """Catches: a run that died before its first checkpoint (a broken image in the first batch) leaving a
    folder that refuses a new start ("continue it with --resume", which hits the same failure)."""

    def broken_first_batch(self):
        raise BadImageError("cannot read image broken.jpg: it is empty (0 bytes); fix or remove it")

    monkeypatch.setattr(trainer.Trainer, "fit", broken_first_batch)
    run = work / "new"
    one_line(capsys, 2, main(["train", str(work / "recipe.yaml"), "--out", str(run)]), r"broken\.jpg")
    assert (run / "config.yaml").is_file() and not (run / "checkpoint.pt").exists()
    monkeypatch.undo()
    assert main(["train", str(work / "recipe.yaml"), "--out", str(run)]) == 0
    assert (run / "results.json").is_file()


# ------------------------------------------------------------------------------------------ broken images


def _photo_folder(root: Path) -> Path:
    """4 classes of 4 small photos each, as a person's folder of class sub-folders holds them."""
    from PIL import Image

    rng = __import__("numpy").random.default_rng(0)
    for c in range(4):
        (root / f"class {c}").mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (24, 24, 3), dtype="uint8")
            Image.fromarray(pixels).save(root / f"class {c}" / f"{i}.jpg")
    return root


def _folder_recipe(work: Path, root: Path, **data) -> Path:
    recipe = work / "folder.yaml"
    raw = {**TINY, "data": {**TINY["data"], "dataset": "folder", "root": str(root), "num_classes": None, "classes_per_batch": 2, **data}}
    raw["eval"] = {"recall_at": [1], "every": 0}
    recipe.write_text(yaml.safe_dump(raw))
    return recipe


def test_an_empty_image_is_named_before_training_and_skipped_when_asked(work, capsys):
    """Catches: a zero-byte JPEG passing every check and ending training in a loader worker's traceback."""
    root = _photo_folder(work / "photos")
    (root / "class 2" / "empty.jpg").write_bytes(b"")
    recipe = _folder_recipe(work, root, test_fraction=0.5)
    code = main(["train", str(recipe), "--out", str(work / "new")])
    one_line(capsys, 2, code, r"1 of \d+ images under .*photos are empty files \(0 bytes\); first: class 2/empty\.jpg; .*skip_bad_images")
    assert not (work / "new").exists()  # a start refused before anything was written leaves no folder
    assert main(["train", str(recipe), "--out", str(work / "new"), "--set", "data.skip_bad_images=true"]) == 0


def test_a_broken_image_in_a_loader_worker_is_one_line(work, capsys):
    """Catches: PyTorch's "Caught BadImageError in DataLoader worker process 0" and its forty lines of the
    worker's traceback printed for one broken file."""
    root = _photo_folder(work / "photos")
    (root / "class 1" / "0.jpg").write_bytes(b"\xff\xd8\xff\xe0 not the rest of a JPEG")
    recipe = _folder_recipe(work, root, test_fraction=0.5, num_workers=1)
    code = main(["train", str(recipe), "--out", str(work / "new")])
    line = one_line(capsys, 2, code, r"cannot read image .*class 1/0\.jpg: .*set data\.skip_bad_images: true")
    assert "Caught" not in line and "worker" not in line


def test_data_inspect_counts_an_empty_image_as_a_problem(work, capsys):
    """Catches: `data inspect` counting a zero-byte JPEG as an image and saying "missing 0", exit 0."""
    root = _photo_folder(work / "photos")
    (root / "class 3" / "empty.jpg").write_bytes(b"")
    assert main(["data", "inspect", "--dataset", "folder", "--root", str(root), "--json"]) == 1
    splits = json.loads(capsys.readouterr().out)["splits"]
    assert sum(s["empty_files"] for s in splits.values()) == 1
    assert [f for s in splits.values() for f in s["first_empty"]] == ["class 3/empty.jpg"]
    assert main(["data", "inspect", "--dataset", "folder", "--root", str(root)]) == 1
    assert "1 empty files (0 bytes: no image), first: class 3/empty.jpg" in capsys.readouterr().out


def test_a_warning_is_one_line_in_our_words():
    """Catches: a skipped image's warning printed with the internal source line that raised it."""
    import warnings

    from metrictransfer import cli

    line = cli._one_line_warning(UserWarning("skipping unreadable image a.jpg: truncated"), UserWarning, "/src/x.py", 3, "warn(...)")
    assert line == "metrictransfer: warning: skipping unreadable image a.jpg: truncated\n"
    saved = warnings.formatwarning
    try:
        try:
            main(["table", "--help"])
        except SystemExit:
            pass
        assert warnings.formatwarning is cli._one_line_warning
    finally:
        warnings.formatwarning = saved


def test_index_and_search_advise_what_they_accept_for_a_broken_image(work, capsys):
    """Catches: index and search advising data.skip_bad_images: true, a recipe key they do not read."""
    root = _photo_folder(work / "photos")
    broken = root / "class 1" / "0.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not the rest of a JPEG")
    code = main(["index", "--checkpoint", str(work / "run"), "--images", str(root), "--out", str(work / "index")])
    line = one_line(capsys, 2, code, rf"cannot read image .*class 1/0\.jpg: .*; fix it or remove it from {re.escape(str(root))}$")
    assert "skip_bad_images" not in line and not (work / "index").exists()
    (root / "class 1" / "0.jpg").unlink()
    assert main(["index", "--checkpoint", str(work / "run"), "--images", str(root), "--out", str(work / "index")]) == 0
    capsys.readouterr()
    (work / "query.jpg").write_bytes(b"GIF89a broken")
    code = main(["search", str(work / "query.jpg"), "--index", str(work / "index")])
    line = one_line(capsys, 2, code, r"cannot read image .*query\.jpg: .*; fix it or leave it out of the queries$")
