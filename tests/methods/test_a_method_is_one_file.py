"""A built-in method is one file: the worked example of docs/extending/method.md, saved as a module of
metrictransfer.methods, is listed, configured, checked, documented and trained with nothing else edited."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

import metrictransfer.methods
from metrictransfer.cli import main
from metrictransfer.config import build_config
from metrictransfer.errors import ConfigError
from metrictransfer.registry import METHODS
from tests.helpers import TINY

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "extending" / "method.md"
END_OF_FILE = "# ---- end of center.py ----"


def _center_module() -> str:
    """The part of the page's example above its end-of-file line: the method's whole module."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)
    (example,) = [block for block in blocks if END_OF_FILE in block]
    return example.split(END_OF_FILE)[0]


@pytest.fixture
def center_is_built_in(tmp_path):
    """center.py placed among the package's own method modules (the package's search path extended, as a
    file added to src/metrictransfer/methods/ would be), the registry as it was afterwards."""
    before = METHODS.snapshot()  # (discovers the package's methods: before center.py is among them)
    folder = tmp_path / "methods"
    folder.mkdir()
    (folder / "center.py").write_text(_center_module())
    search_path = metrictransfer.methods.__path__  # the list the package's spec shares: extended in place
    search_path.append(str(folder))
    METHODS._discovered, METHODS._declared_cache = False, None
    try:
        yield folder
    finally:
        search_path.remove(str(folder))
        sys.modules.pop("metrictransfer.methods.center", None)
        METHODS.restore(before)
        METHODS._discovered, METHODS._declared_cache = True, None


def test_the_module_is_listed_without_importing_it(center_is_built_in):
    """Catches a method the command line's help cannot list until something imports it."""
    assert "center" in METHODS.declared_names()
    assert "metrictransfer.methods.center" not in sys.modules


def test_its_section_is_validated_checked_and_documented(center_is_built_in):
    """Catches a built-in method whose settings need an edit of config.py or of the reference script."""
    config = build_config({**TINY, "method": "center", "center": {"weight": 0.5}})
    assert config.method_section == {"weight": 0.5, "center_lr_multiplier": 10.0}
    assert config.model_dump(mode="json")["center"] == {"weight": 0.5, "center_lr_multiplier": 10.0}
    with pytest.raises(ConfigError, match=r"center\.weight: Input should be a valid number"):
        build_config({**TINY, "method": "center", "center": {"weight": "high"}})
    with pytest.raises(ConfigError, match=r"center\.wieght: unknown key; allowed keys here: weight, center_lr_multiplier"):
        build_config({**TINY, "method": "center", "center": {"wieght": 0.5}})
    with pytest.raises(ConfigError, match="center: settings of method 'center', but this run's method is 'source'"):
        build_config({**TINY, "center": {"weight": 0.5}})
    with pytest.raises(ConfigError, match="data.dataset: unlabelled has no classes"):  # its own check across sections
        build_config({**TINY, "method": "center", "data": {"dataset": "unlabelled", "root": "photos"}})

    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    page, _ = reference.render()
    assert "\n## center\n" in page and "| `center.weight` | float, ≥ 0 | `0.01` | λ: weight of the center loss |" in page


@pytest.mark.slow
def test_it_trains_resumes_and_is_tabled_through_the_command_line(center_is_built_in, tmp_path, capsys):
    """Catches a method that works from Python only: the commands find it, store its section in the run's
    config.yaml and read it back when the run resumes and is tabled."""
    import yaml

    recipe = tmp_path / "center.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "method": "center", "center": {"weight": 0.1}}))
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(run)]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["center"] == {"weight": 0.1, "center_lr_multiplier": 10.0}
    assert main(["train", "--resume", str(run)]) == 0  # finished: its recipe is read back and nothing changes
    capsys.readouterr()
    assert main(["table", str(run)]) == 0
    assert "+ 0.1·center" in capsys.readouterr().out
