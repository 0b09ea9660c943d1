"""The command line explains itself: the top-level help lists every command, each command says what it does,
what it writes and where it is documented, every option has help, ``--version`` answers without torch, and
every command that prints results prints exactly one JSON document with ``--json``. Also: a finished run
resumed is answered at once, and pretrained weights that cannot be downloaded fail in seconds."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from metrictransfer import __version__
from metrictransfer.cli import COMMANDS, build_parser, main
from metrictransfer.config import load_config
from metrictransfer.engine import trainer
from metrictransfer.engine.run_folder import finished_run
from metrictransfer.models import embedding
from metrictransfer.models.embedding import EmbeddingModel
from tests.helpers import tiny

ROOT = Path(__file__).resolve().parents[1]
TINY = tiny("checkpoint")
# The commands that print results, each of which takes --json.
RESULT_COMMANDS = {"demo", "train", "data inspect", "embed", "evaluate", "index", "search", "export", "report", "table", "tune"}


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every command's parser by its full name ("data inspect"), nested ones included."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[prefix + name] = sub
                found.update(_subcommands(sub, prefix + name + " "))
    return found


def _run(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def _one_json_document(stdout: str) -> object:
    """stdout is exactly one JSON document (json.loads fails on anything before or after it)."""
    assert stdout.strip(), "nothing printed"
    return json.loads(stdout)


# ------------------------------------------------------------------------------------------------ help


def test_every_command_has_a_description_and_every_option_help():
    commands = _subcommands(build_parser())
    assert set(commands) == set(COMMANDS)
    for name, parser in commands.items():
        assert parser.description, f"metrictransfer {name} has no description"
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"metrictransfer {name}: {action.option_strings or action.dest} has no help"
    for action in build_parser()._actions:
        assert isinstance(action, argparse._HelpAction) or action.help, action.option_strings or action.dest


def test_each_description_says_what_the_command_writes_and_names_existing_docs_pages():
    for name, parser in _subcommands(build_parser()).items():
        description = parser.description or ""
        assert "\nwrites: " in description, name
        docs = re.search(r"^docs: (.*)", description, re.MULTILINE | re.DOTALL)
        assert docs, f"metrictransfer {name} names no docs page"
        pages = re.findall(r"[\w/-]+\.md", docs.group(1))
        assert pages, name
        for page in pages:
            assert (ROOT / "docs" / page).is_file(), f"metrictransfer {name}: docs/{page} does not exist"


def test_the_top_level_help_lists_every_command_in_plain_text(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    leaves = [name for name in COMMANDS if name != "data"]
    for name in leaves:
        assert re.search(rf"^  {re.escape(name)}  +\S", text, re.MULTILINE), f"{name} is not listed"
    assert "``" not in text and ":class:" not in text and ":data:" not in text  # no reST markup
    assert max(map(len, text.splitlines())) <= 80


@pytest.mark.parametrize("name", sorted(RESULT_COMMANDS))
def test_every_command_that_prints_results_takes_json(name):
    parser = _subcommands(build_parser())[name]
    assert "--json" in parser._option_string_actions, f"metrictransfer {name} has no --json"
    assert "--json" in (parser.description or ""), f"metrictransfer {name}: its description does not say what --json prints"


@pytest.mark.slow
def test_version_is_printed_without_importing_torch():
    code = (
        "import sys\nfrom metrictransfer.cli import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit as done:\n    assert done.code == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"metrictransfer {__version__}"


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["train", "--no-such-flag"]])
def test_parsing_imports_nothing_heavy(argv):
    """--help and argument errors answer at once: no torch, numpy, pydantic or package metadata."""
    code = (
        f"import sys\nfrom metrictransfer.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'numpy', 'pydantic', 'yaml', 'importlib.metadata') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------ one tiny finished run


def _quick_report(run: str | Path) -> Path:
    """write_report's stand-in (the real one, with its t-SNE map, takes most of a minute here): it prints, as
    a notice would, and writes report.md."""
    print(f"writing the report of {run}")
    (Path(run) / "report.md").write_text("# report\n")
    return Path(run) / "report.md"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, str, str]:
    """A one-epoch run trained by ``metrictransfer train --json``: (folder, stdout, stderr)."""
    from metrictransfer import report

    root = tmp_path_factory.mktemp("tiny")
    (root / "recipe.yaml").write_text(yaml.safe_dump(TINY))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report, "write_report", _quick_report)
        status, out, err = _run(["train", str(root / "recipe.yaml"), "--out", str(root / "run"), "--json"])
    assert status == 0, err
    return root / "run", out, err


@pytest.mark.slow
def test_train_json_is_one_object_and_the_epoch_lines_go_to_stderr(tiny):
    run, out, err = tiny
    printed = _one_json_document(out)
    assert printed == {
        "run": str(run),
        "final": json.loads((run / "results.json").read_text())["final"],
        "results": str(run / "results.json"),
        "report": str(run / "report.md"),
        "already_finished": False,
    }
    assert "[tiny] epoch 1/1" in err and "writing the report of" in err


@pytest.mark.slow
def test_train_prints_a_line_for_people_by_default(tmp_path, monkeypatch):
    from metrictransfer import report

    def fake_train(config, out, **kwargs):
        Path(out).mkdir(parents=True, exist_ok=True)  # as a real training run does
        print("[tiny] epoch 1/1  loss 1.0000")
        return {"epochs": 1, "final": {"recall@1": 0.5, "recall@2": 0.75}}

    monkeypatch.setattr(trainer, "train", fake_train)
    monkeypatch.setattr(report, "write_report", _quick_report)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(TINY))
    status, out, _ = _run(["train", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "run")])
    assert status == 0
    assert out.splitlines()[-1] == (
        f"{tmp_path / 'run'}: trained 1 epochs; final recall@1 50.0%, recall@2 75.0%; report: {tmp_path / 'run' / 'report.md'}"
    )


@pytest.mark.slow
def test_resuming_a_finished_run_answers_at_once_without_loading_model_or_data(tiny, tmp_path, monkeypatch):
    run, _, _ = tiny
    copy = tmp_path / "run"
    shutil.copytree(run, copy)

    def no_setup(*args, **kwargs):
        raise AssertionError("the model and data were loaded")

    monkeypatch.setattr(trainer.Trainer, "setup", no_setup)
    before = {p.name: p.stat().st_mtime_ns for p in copy.iterdir() if p.is_file() and p.name != ".lock"}
    started = time.monotonic()
    status, out, err = _run(["train", "--resume", str(copy)])
    assert status == 0, err
    assert time.monotonic() - started < 10
    assert out == f"{copy} already finished (1 epochs); its results: {copy / 'results.json'}\n"
    assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir() if p.is_file() and p.name != ".lock"} == before
    status, out, _ = _run(["train", "--resume", str(copy), "--json"])
    assert status == 0 and _one_json_document(out) == {
        "run": str(copy),
        "final": json.loads((copy / "results.json").read_text())["final"],
        "results": str(copy / "results.json"),
        "report": str(copy / "report.md"),
        "already_finished": True,
    }
    (copy / "report.md").unlink()
    status, out, _ = _run(["train", "--resume", str(copy)])
    assert status == 0 and out.rstrip().endswith(f"it has no report.md: metrictransfer report {copy}")


@pytest.mark.slow
def test_a_run_is_finished_only_with_its_results_and_all_epochs_checkpointed(tiny, tmp_path):
    run, _, _ = tiny
    config = load_config(run / "config.yaml")
    assert finished_run(run, config) is not None
    assert finished_run(run, config.model_copy(update={"optim": config.optim.model_copy(update={"epochs": 2})})) is None
    assert finished_run(run, config.model_copy(update={"seed": config.seed + 1})) is None  # resuming says it differs
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "results.json").unlink()
    assert finished_run(copy, config) is None
    shutil.copy(run / "results.json", copy / "results.json")
    (copy / "checkpoint.pt").write_bytes(b"")  # damaged: resuming falls back to a kept checkpoint and says so
    assert finished_run(copy, config) is None


@pytest.mark.slow
def test_embed_prints_a_line_by_default_and_one_object_with_json(tiny, tmp_path):
    run, _, _ = tiny
    status, out, _ = _run(["embed", "--checkpoint", str(run), "--out", str(tmp_path / "a.npz")])
    assert status == 0 and re.fullmatch(r".*a\.npz: \d+ items of the test split, 16-d embeddings\n", out), out
    status, out, _ = _run(["embed", "--checkpoint", str(run), "--out", str(tmp_path / "b.npz"), "--json"])
    printed = _one_json_document(out)
    assert status == 0 and printed["out"] == str(tmp_path / "b.npz") and printed["dim"] == 16 and printed["items"] > 0


@pytest.mark.parametrize(
    "argv, keys",
    [
        (
            lambda run, tmp: [
                "index",
                "--checkpoint",
                str(run),
                "--images",
                str(ROOT / "examples" / "gallery"),
                "--out",
                str(tmp / "index"),
            ],
            {"out", "count", "dim", "metric", "classes", "faiss", "kind", "measured", "generation", "query_model"},
        ),
        (
            lambda run, tmp: ["export", "--checkpoint", str(run), "--format", "safetensors", "--out", str(tmp / "m.safetensors")],
            {"out", "format", "description", "embedding_dim", "max_abs_difference"},
        ),
        (lambda run, tmp: ["evaluate", "--checkpoint", str(run)], {"recall@1", "recall@2", "map@r", "r_precision"}),
    ],
    ids=["index", "export", "evaluate"],
)
@pytest.mark.slow
def test_json_is_exactly_one_object(tiny, tmp_path, argv, keys):
    run, _, _ = tiny
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    status, out, err = _run([*argv(copy, tmp_path), "--json"])
    assert status == 0, err
    printed = _one_json_document(out)
    assert isinstance(printed, dict) and set(printed) == keys


@pytest.mark.slow
def test_report_json_is_one_object(tiny, tmp_path, monkeypatch):
    from metrictransfer import report

    monkeypatch.setattr(report, "write_report", _quick_report)
    run, _, _ = tiny
    shutil.copytree(run, tmp_path / "run")
    status, out, err = _run(["report", str(tmp_path / "run"), "--json"])
    assert status == 0 and _one_json_document(out) == {"reports": [str(tmp_path / "run" / "report.md")]}
    assert "writing the report of" in err


@pytest.mark.slow
def test_table_json_is_one_list(tiny):
    run, _, _ = tiny
    status, out, _ = _run(["table", str(run), "--json"])
    assert status == 0 and isinstance(_one_json_document(out), list)


@pytest.mark.slow
def test_demo_json_is_one_object_and_its_progress_goes_to_stderr(monkeypatch, tmp_path):
    from metrictransfer import demo

    def fake_demo(out, **kwargs):
        print("== source: source, resnet18 128-d, 1 epochs ==")  # what the demo prints as it goes
        return {"seed": 0, "split": "test", "models": {"source": {"recall@1": 0.5}}}

    monkeypatch.setattr(demo, "run_demo", fake_demo)
    status, out, err = _run(["demo", "--out", str(tmp_path / "demo"), "--json"])
    assert status == 0
    assert _one_json_document(out) == {"out": str(tmp_path / "demo"), "seed": 0, "split": "test", "models": {"source": {"recall@1": 0.5}}}
    assert "== source" in err


# -------------------------------------------------------------------------------- pretrained, offline


def _empty_caches(monkeypatch, tmp_path) -> None:
    """No weights in Hugging Face's or torch hub's cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch"))


def test_pretrained_weights_offline_fail_in_seconds_and_leave_no_run_folder(tmp_path, monkeypatch):
    if embedding._reachable("https://huggingface.co"):
        pytest.skip("huggingface.co is reachable: this test needs the network to be unreachable")
    _empty_caches(monkeypatch, tmp_path)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(TINY))
    started = time.monotonic()
    status, out, err = _run(["train", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "new"), "--set", "model.pretrained=true"])
    assert time.monotonic() - started < 10
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(
        r"the pretrained weights of backbone 'resnet10t' are not in the local cache and huggingface\.co "
        r"cannot be reached; set model\.weights: FILE \(a local state dict\) to train offline, or connect",
        err,
    ), err
    assert not (tmp_path / "new").exists(), "a failed start left a run folder behind"


def test_pretrained_weights_with_hf_hub_offline_set_fail_at_once(tmp_path, monkeypatch):
    from huggingface_hub import constants

    _empty_caches(monkeypatch, tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(embedding, "_reachable", lambda *args: pytest.fail("the hub was probed although offline was asked for"))
    with pytest.raises(embedding.MissingFileError, match=r"'resnet10t' are not in the local cache and HF_HUB_OFFLINE is set"):
        EmbeddingModel("resnet10t", 8, pretrained=True)
    assert constants.HF_HUB_OFFLINE is True  # restored as it was


def test_pretrained_weights_in_the_cache_load_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from safetensors.torch import save_file
    from timm.models import get_pretrained_cfg

    _empty_caches(monkeypatch, tmp_path)
    monkeypatch.setattr(embedding, "_reachable", lambda *args: False)
    offline_before = constants.HF_HUB_OFFLINE
    repo = get_pretrained_cfg("resnet10t").hf_hub_id
    revision = "0" * 40
    snapshot = tmp_path / "hf" / f"models--{repo.replace('/', '--')}" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(revision)
    torch.manual_seed(3)
    import timm

    weights = timm.create_model("resnet10t").state_dict()
    save_file(weights, str(snapshot / "model.safetensors"))
    model = EmbeddingModel("resnet10t", 8, pretrained=True)
    assert torch.equal(model.backbone.conv1[0].weight, weights["conv1.0.weight"])
    assert constants.HF_HUB_OFFLINE == offline_before  # offline only while the weights were looked up
    # a local weights file replaces every backbone weight: nothing is downloaded, offline or not
    torch.save({k: v for k, v in weights.items() if not k.startswith("fc.")}, tmp_path / "local.pt")
    shutil.rmtree(tmp_path / "hf")
    model = EmbeddingModel("resnet10t", 8, pretrained=True, weights=tmp_path / "local.pt")
    assert torch.equal(model.backbone.conv1[0].weight, weights["conv1.0.weight"])


@pytest.mark.slow
def test_commands_that_read_files_only_load_no_torch(tiny, tmp_path):
    """table and data inspect answer in well under a second: no torch, torchvision or matplotlib loaded."""
    run_dir = tiny[0]
    folder = tmp_path / "photos"
    for name in ("café crème", "tea"):
        (folder / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8)).save(folder / name / f"{i}.jpg")
    for argv in (["table", str(run_dir)], ["data", "inspect", "--dataset", "folder", "--root", str(folder)]):
        code = (
            f"import sys\nfrom metrictransfer.cli import main\nstatus = main({argv!r})\n"
            "heavy = [m for m in ('torch', 'torchvision', 'matplotlib') if m in sys.modules]\n"
            "assert status == 0 and not heavy, (status, heavy)\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{argv}: {done.stderr}"
