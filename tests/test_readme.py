"""The README stays true: its Python examples run, its commands parse and run (at toy sizes, in a temporary
folder, writing nowhere but ``runs/``), its links reach the docs pages that now hold the details, and its
headline figures are the benchmark tables'."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch

from tests.helpers import broken_links

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", flags=re.S | re.M)
BLOCKS = [code for language, code in FENCE.findall(README) if language == "python"]
SHELL = [code for language, code in FENCE.findall(README) if language == "bash"]


def _command_lines() -> list[list[str]]:
    """argv of every command line in the README's bash blocks (continuations joined, comments cut)."""
    lines = []
    for code in SHELL:
        for line in code.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                lines.append(argv)
    return lines


COMMANDS = _command_lines()
CLI = [argv[1:] for argv in COMMANDS if argv[0].endswith("bin/metrictransfer") or argv[0] == "metrictransfer"]
OUTPUT_OPTIONS = ("--out", "--grid")


# ----------------------------------------------------------------------------------------- Python examples


def test_readme_has_python_examples():
    assert BLOCKS


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert not list(tmp_path.iterdir()), "a README example left files in the working directory"


# ------------------------------------------------------------------------------------------ commands


def test_readme_shows_the_two_setup_commands_first():
    """`make demo` and `make test` are the first commands shown, before any example of a job."""
    first = _command_lines()[:2]
    assert first == [["make", "demo"], ["make", "test"]], first
    assert README.index("make test") < README.index("bin/metrictransfer train")


def test_readme_shows_each_main_job():
    """One example each: train a source, transfer to a target, a mutual cohort, evaluate, export, index, search."""
    shown = [shlex.join(args) for args in CLI]

    def has(pattern: str) -> bool:
        return any(re.search(pattern, line) for line in shown)

    assert has(r"^train recipes/glyphs_source\.yaml"), "a source"
    assert has(r"^train \S+ .*transfer\.source_checkpoint="), "a transfer"
    assert has(r"^train recipes/mutual/"), "a mutual-learning cohort"
    for command in ("evaluate", "export", "index", "search"):
        assert has(rf"^{command} "), command


def test_readme_make_targets_exist():
    """In code blocks and in the prose (`make gpu-check DRY=1`)."""
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    shown = {argv[1] for argv in COMMANDS if argv[0] == "make"} | set(re.findall(r"`make ([\w-]+)", README))
    assert {"demo", "test"} <= shown <= targets, shown - targets


def test_readme_commands_parse_and_name_existing_files():
    from metrictransfer.cli import build_parser

    assert len(CLI) >= 10
    for args in CLI:
        try:
            build_parser().parse_args(args)
        except SystemExit as stop:
            pytest.fail(f"`metrictransfer {shlex.join(args)}` is not a valid command line (exit {stop.code})")
        for arg in args:
            if arg.startswith(("recipes/", "examples/")):
                assert (ROOT / arg).exists(), f"the README names {arg}, which does not exist"


def test_readme_commands_write_under_runs():
    """Outputs go to a run folder under runs/ (ignored by git), never into the repository root."""
    for args in CLI:
        for option, value in zip(args, args[1:]):
            if option in OUTPUT_OPTIONS:
                assert value.startswith("runs/") and ".." not in value, f"`{shlex.join(args)}` writes {value}"
    assert "runs/" in (ROOT / ".gitignore").read_text().split()


# Toy sizes for every new training the README shows: a few classes, one epoch.
TINY = ["--set", "data.num_classes=4", "--set", "data.classes_per_batch=4", "--set", "optim.epochs=1"]
# ... and for a distillation, whose pretrained source cannot be downloaded here: the same architecture with
# random weights in a local file (saved at its pretrained size, so loading resamples a ViT's positions too).
TINY_DISTILL = ["--source-image-size", "56", "--image-size", "32", "--epochs", "1", "--batch-size", "6", "--set", "eval.agreement_at=[1]"]


def _toy(args: list[str], scratch: Path) -> list[str]:
    if args[0] == "train" and "--resume" not in args:
        return args + TINY
    if args[0] == "distill":
        import timm

        source = args[args.index("--source") + 1]
        weights = scratch / "source.pt"
        torch.save(timm.create_model(source.partition(".")[0], num_classes=0).state_dict(), weights)
        return args + TINY_DISTILL + ["--source-weights", str(weights)]
    return args


@pytest.mark.slow
def test_readme_commands_run(tmp_path, tmp_path_factory, monkeypatch, capsys):
    """Every metrictransfer command of the README, in order, as a user would type them from the repository
    root (here a temporary copy of it holding recipes/ and examples/), trainings at toy sizes. Afterwards
    the folder holds nothing new but runs/."""
    from metrictransfer.cli import main

    for name in ("recipes", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()  # a recipe may set `threads`
    try:
        for args in CLI:
            run = _toy(args, tmp_path_factory.mktemp("weights"))
            status = main(run)
            assert status == 0, f"`metrictransfer {shlex.join(run)}` exited {status}: {capsys.readouterr().err}"
            for option, value in zip(args, args[1:]):
                if option in OUTPUT_OPTIONS:
                    assert (tmp_path / value).exists(), f"`{shlex.join(args)}` did not write {value}"
    finally:
        torch.set_num_threads(threads)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["examples", "recipes", "runs"]


# ------------------------------------------------------------------ links: the details live in the docs


LINKS = re.findall(r"\]\(([^)\s]+)\)", README)


def test_readme_links_resolve():
    """Relative links name files of the repository, and their #anchors headings of the page."""
    assert [link for link in LINKS if not re.match(r"\w+://", link)]
    assert not broken_links(ROOT / "README.md")


def test_readme_links_every_guide_and_reference_page():
    """The README is the summary: each guide, reference page and the Contributing page is one link away."""
    linked = {link.partition("#")[0] for link in LINKS}
    pages = sorted(ROOT.glob("docs/guides/*.md")) + sorted(ROOT.glob("docs/reference/*.md"))
    pages += [ROOT / "docs/getting-started.md", ROOT / "docs/contributing.md", ROOT / "docs/benchmarks/index.md"]
    missing = [str(p.relative_to(ROOT)) for p in pages if str(p.relative_to(ROOT)) not in linked]
    assert not missing, missing


# ------------------------------------------------------------------------------------ headline figures


def test_readme_figures_are_the_benchmark_tables():
    """Every mean ± std the README quotes is in a table written by a benchmark script."""
    tables = "\n".join(p.read_text() for p in (ROOT / "benchmarks" / "results").glob("*.md"))
    quoted = set(re.findall(r"\d+\.\d+ ± \d+\.\d+", README))
    assert quoted, "the README shows no headline results"
    assert not {figure for figure in quoted if figure not in tables}
