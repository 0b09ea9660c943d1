"""Recipes and stored configurations of earlier layouts still load (metrictransfer.config_migration).

tests/fixtures/config_stored_before_methods_owned_sections.yaml is the config.yaml that metrictransfer
wrote for a transfer run before each method owned its section (commit 4b3f8ad): every built-in method's
section, whatever the method, and ``method_params``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from metrictransfer.config import build_config, config_to_dict, load_config, load_run_config, resume_differences, save_config
from metrictransfer.errors import ConfigError
from metrictransfer.methods.classifier import ClassifierConfig
from metrictransfer.methods.mutual import MutualConfig
from metrictransfer.methods.selfsup import SelfSupConfig
from metrictransfer.methods.transfer import TransferConfig
from tests.helpers import TINY

STORED = Path(__file__).parent / "fixtures" / "config_stored_before_methods_owned_sections.yaml"


def test_a_configuration_stored_with_every_section_loads_as_its_own_method():
    """Catches an old run folder (or a checkpoint, which stores the same mapping) that no longer loads,
    loads with another method's settings, or that a resume would see as changed."""
    saved = yaml.safe_load(STORED.read_text())
    assert {"method_params", "transfer", "selfsup", "classifier", "mutual"} <= set(saved)  # what the fixture is
    config = load_config(STORED)
    transfer = config.section(TransferConfig)
    assert (transfer.source_checkpoint, transfer.loss.params) == ("runs/source", {"sigma": 2.0})
    stored_now = config_to_dict(config)
    assert not {"method_params", "selfsup", "classifier", "mutual"} & set(stored_now)
    assert stored_now["transfer"] == saved["transfer"]
    assert {k: v for k, v in stored_now.items() if k != "transfer"} == {
        k: v for k, v in saved.items() if k not in ("method_params", "transfer", "selfsup", "classifier", "mutual")
    }
    assert resume_differences(saved, stored_now) == []
    assert load_run_config(STORED).method_section == saved["transfer"]  # read by `table`, without the method's module


def test_a_configuration_written_now_reads_back_equal(tmp_path):
    """Catches a section written under one name and read under another."""
    config = load_config(STORED)
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config


@pytest.mark.parametrize(
    "raw, section, expected",
    [
        (
            {"method": "transfer", "transfer": {"source_checkpoint": "s", "sigma": 0.5, "delta": 2}},
            TransferConfig,
            {"loss": {"name": "relaxed_contrastive", "params": {"sigma": 0.5, "delta": 2}}},
        ),
        (
            {"method": "transfer", "transfer": {"source_checkpoint": "s", "loss": "pkt", "params": {}}},
            TransferConfig,
            {"loss": {"name": "pkt", "params": {}}},
        ),
        (
            {"method": "mutual", "model": {"normalize": True}, "mutual": {"params": {"distance_weight": 2}}},
            MutualConfig,
            {"loss": {"name": "rkd", "params": {"distance_weight": 2}}},
        ),
        (
            {
                "method": "classifier",
                "data": {"holdout_images": 0.2},
                "classifier": {"source_checkpoint": "s", "distill": "hinton", "temperature": 3, "sigma": 1},
            },
            ClassifierConfig,
            {"distill": {"name": "hinton", "params": {"temperature": 3}}},
        ),
        ({"method": "selfsup", "method_params": {"temperature": 0.2}}, SelfSupConfig, {"temperature": 0.2}),
    ],
    ids=["transfer.sigma", "transfer.params", "mutual.params", "classifier.temperature", "method_params"],
)
def test_keys_of_the_earlier_layout_move_to_their_place(raw, section, expected):
    """Catches a recipe of an earlier version refused, or its setting silently lost on the way."""
    settings = build_config({**TINY, **raw}).section(section).model_dump(mode="json")
    assert {key: settings[key] for key in expected} == expected


def test_the_miner_params_of_the_earlier_layout_move_into_the_miner():
    config = build_config(
        {**TINY, "metric_loss": {"name": "multi_similarity", "miner": "multi_similarity", "miner_params": {"epsilon": 0.2}}}
    )
    assert config.metric_loss.miner.params == {"epsilon": 0.2}


def test_settings_given_twice_or_for_another_method_are_refused():
    """Catches two spellings of one setting where one silently wins, and settings a run would ignore."""
    with pytest.raises(ConfigError, match="once: in its section selfsup, not also in method_params"):
        build_config({**TINY, "method": "selfsup", "selfsup": {"temperature": 0.3}, "method_params": {"temperature": 0.2}})
    with pytest.raises(ConfigError, match="mutual: settings of method 'mutual', but this run's method is 'transfer'"):
        build_config({**TINY, "method": "transfer", "transfer": {"source_checkpoint": "s"}, "mutual": {"members": 3}})
    with pytest.raises(ConfigError, match="source: method 'source' takes no settings of its own"):
        build_config({**TINY, "source": {"x": 1}})
    with pytest.raises(ConfigError, match="optm: unknown key; allowed keys here: method, name, .*the section named after the method"):
        build_config({**TINY, "optm": {}})
