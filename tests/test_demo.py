"""The demo's output: its percent table, its conclusion (and the benchmark figures it quotes), its combined report."""

import json
import re
from pathlib import Path

import pytest

from metrictransfer.cli import main
from metrictransfer.demo import DEMO_QUALITY, conclusion, format_table

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "demo_quality.json"
MODELS = ("source", "target_alone", "target_transfer")


def test_the_quoted_benchmark_figures_are_those_of_benchmarks_results_demo_quality_json():
    """DEMO_QUALITY (metrictransfer/demo.py) must be refreshed whenever benchmarks/demo_quality.py is rerun."""
    bench = json.loads(BENCHMARK.read_text())
    assert bench["epochs_scale"] == 1.0
    differences = [
        bench["per_seed"][str(s)]["models"]["target_transfer"]["recall@1"] - bench["per_seed"][str(s)]["models"]["target_alone"]["recall@1"]
        for s in bench["seeds"]
    ]
    expected = {"seeds": bench["seeds"], "mean": sum(differences) / len(differences), "min": min(differences), "max": max(differences)}
    assert DEMO_QUALITY["seeds"] == expected["seeds"], "refresh DEMO_QUALITY in src/metrictransfer/demo.py"
    for key in ("mean", "min", "max"):
        assert DEMO_QUALITY[key] == pytest.approx(expected[key], abs=1e-6), f"refresh DEMO_QUALITY[{key!r}] in src/metrictransfer/demo.py"


def test_table_is_in_percent_and_conclusion_says_the_gain_and_the_benchmark_range():
    models = {
        name: {"backbone": "b", "embedding_dim": 32, "recall@1": r1, "recall@2": 0.9} for name, r1 in zip(MODELS, (0.8689, 0.6650, 0.6634))
    }
    table = format_table(models)
    assert "R@1" in table and "86.9" in table and "0.8689" not in table
    text = conclusion(models, seed=0)["text"]
    assert text.startswith("transfer vs target alone: -0.2 R@1 (seed 0); over 3 seeds on this demo: mean ")
    assert "full-length" not in text
    assert "full-length default demo" in conclusion(models, seed=0, full_length=False)["text"]


@pytest.mark.slow
def test_tiny_demo_prints_percent_and_a_conclusion_and_writes_a_combined_report(tmp_path, capsys):
    out = tmp_path / "demo"
    overrides = ["data.num_classes=12", "data.classes_per_batch=6", "data.images_per_class=2", "threads=2"]
    args = ["demo", "--out", str(out), "--epochs-scale", "0.05"] + [a for o in overrides for a in ("--set", o)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())

    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (\w+) +\|.*\| +(\d+\.\d) \|.*$", printed, flags=re.M)}
    for name in MODELS:
        line = next(line for line in printed.splitlines() if line.startswith(f"| {name} "))
        r1 = float(line.split("|")[4])
        assert r1 == pytest.approx(100 * results["models"][name]["recall@1"], abs=0.051), line  # percent, one decimal
        assert 0 <= results["models"][name]["recall@1"] <= 1  # results.json keeps fractions
    assert rows

    found = re.search(r"^transfer vs target alone: ([+-]\d+\.\d) R@1 \(seed 0\); over 3 seeds on this demo: mean ", printed, flags=re.M)
    assert found, printed
    gain = results["models"]["target_transfer"]["recall@1"] - results["models"]["target_alone"]["recall@1"]
    assert float(found.group(1)) == pytest.approx(100 * gain, abs=0.051)
    assert "full-length default demo" in printed  # a shortened run says the range is not its own
    assert results["conclusion"]["transfer_minus_alone"] == pytest.approx(gain)
    assert results["conclusion"]["benchmark"]["mean"] == DEMO_QUALITY["mean"]
    assert results["conclusion"]["comparable_to_benchmark"] is False

    for name in ["config.json", "log.csv", "recall.png", "source/checkpoint.pt", "target_transfer/checkpoint.pt"]:
        assert (out / name).is_file(), name
    assert (out / "target_transfer" / "embedding_map.png").is_file()

    report = (out / "report.md").read_text()
    for name in MODELS:
        assert f"[{name}]({name}/report.md)" in report
        assert f"({name}/curves.png)" in report and f"({name}/retrieval.png)" in report
        assert (out / name / "retrieval.png").is_file() and (out / name / "curves.png").is_file()
    assert results["conclusion"]["text"].splitlines()[0] in report
    shared = re.search(r"^Query items \(test split\): ([\d, ]+);", report, flags=re.M)
    assert shared, report
    for name in MODELS:  # each model's own retrieval grid drew the same queries
        own = re.search(r"^Query items \(test split\): ([\d, ]+)\.$", (out / name / "report.md").read_text(), flags=re.M)
        assert own and own.group(1) == shared.group(1), name


def _demo_output_blocks(text: str) -> list[str]:
    return [block for block in re.findall(r"^```text\n(.*?)^```", text, flags=re.S | re.M) if block.startswith("| model ")]


@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md"])
def test_the_quick_start_shows_what_the_demo_prints_for_seed_0(page):
    """The demo's table and conclusion quoted in the quick start are what the demo prints for seed 0 with the
    benchmark's figures (benchmarks/results/demo_quality.json): refreshed with it, never made up."""
    bench = json.loads(BENCHMARK.read_text())
    models = bench["per_seed"]["0"]["models"]
    expected = format_table(models) + "\n" + conclusion(models, seed=0)["text"] + "\n"
    blocks = _demo_output_blocks((BENCHMARK.parents[2] / page).read_text())
    assert blocks == [expected], f"refresh the demo's output in {page} from benchmarks/results/demo_quality.json (seed 0)"
