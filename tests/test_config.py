from pathlib import Path

import pytest

from metrictransfer.config import ConfigError, build_config, load_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_defaults_are_the_paper_protocol():
    c = build_config({})
    assert (c.optim.optimizer, c.optim.lr, c.optim.weight_decay, c.optim.scheduler) == ("adamw", 1e-4, 1e-4, "cosine")
    assert (c.data.classes_per_batch, c.data.images_per_class, c.data.views) == (45, 2, 2)
    assert (c.transfer.sigma, c.transfer.delta, c.transfer.metric_weight) == (1.0, 1.0, 0.0)
    assert c.metric_loss.name == "proxy_anchor" and c.model.pretrained is False


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.datset=glyphs"], r"data\.datset: unknown key; allowed keys here: dataset"),
        (["optim.lr=fast"], r"optim\.lr: .*number.*'fast'"),
        (["metric_loss.name=arcface"], r"unknown metric loss 'arcface'; valid names: contrastive, multi_similarity"),
        (["data.transform=fancy"], r"unknown transform 'fancy'; valid names: glyphs, paper"),
        (["optim.scheduler=step"], r"optim\.scheduler: .*'cosine'"),
        (["method=transfer"], r"transfer\.source_checkpoint"),
        (["optim.epochs=0"], r"optim\.epochs"),
        (["lr=1"], r"lr: unknown key"),
        (["optim.lr"], r"not of the form"),
    ],
)
def test_bad_configuration_names_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build_config({}, overrides)


def test_overrides_are_typed():
    c = build_config({}, ["optim.lr=3e-4", "eval.recall_at=[8, 1]", "model.weights=null", "data.views=3"])
    assert c.optim.lr == 3e-4 and c.eval.recall_at == [1, 8] and c.data.views == 3


def test_recipe_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*\n  optim\.epochz: unknown key"):
        load_config(bad)
    with pytest.raises(ConfigError, match="recipe not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_is_valid(recipe):
    load_config(recipe)


def test_table1_recipes_are_valid_and_match_their_generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_recipes", RECIPES / "table1" / "make_recipes.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    expected = generator.all_recipes()
    on_disk = {p.name: p.read_text() for p in (RECIPES / "table1").glob("*.yaml")}
    assert on_disk == expected, "rerun recipes/table1/make_recipes.py"
    assert len(on_disk) == 3 * 3 * 8
    for name in on_disk:
        config = load_config(RECIPES / "table1" / name)
        assert config.data.dataset in ("cub", "cars", "sop")
