from pathlib import Path

import pytest

from metrictransfer.config import ConfigError, build_config, load_config
from metrictransfer.methods.mutual import MutualConfig
from metrictransfer.methods.transfer import TransferConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_defaults_are_the_paper_protocol():
    c = build_config({})
    assert (c.optim.optimizer, c.optim.lr, c.optim.weight_decay, c.optim.scheduler) == ("adamw", 1e-4, 1e-4, "cosine")
    assert (c.data.classes_per_batch, c.data.images_per_class, c.data.views) == (45, 2, 2)
    from metrictransfer.losses import build_transfer_loss

    transfer = build_config({"method": "transfer", "transfer": {"source_checkpoint": "runs/source"}}).section(TransferConfig)
    loss = build_transfer_loss(transfer.loss.name, transfer.loss.params)
    assert (transfer.loss.name, loss.sigma, loss.delta, transfer.metric_weight) == ("relaxed_contrastive", 1.0, 1.0, 0.0)
    assert c.metric_loss.name == "proxy_anchor" and c.model.pretrained is False


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["data.datset=glyphs"], r"data\.datset: unknown key; allowed keys here: dataset"),
        (["optim.lr=fast"], r"optim\.lr: .*number.*'fast'"),
        (["metric_loss.name=arcface"], r"unknown metric loss 'arcface'; valid names: .*ArcFaceLoss, .*contrastive, multi_similarity"),
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
    with pytest.raises(ConfigError, match=r"bad\.yaml\): optim\.epochz: unknown key"):
        load_config(bad)
    with pytest.raises(ConfigError, match="recipe not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_is_valid(recipe):
    load_config(recipe)


def _generator(folder: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"make_recipes_{folder}", RECIPES / folder / "make_recipes.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    return generator


@pytest.mark.parametrize(
    ("folder", "count", "datasets"),
    [
        ("table1", 3 * 3 * 8, ("cub", "cars", "sop")),
        ("mutual", 2 * 6 + 1, ("cub", "cars", "glyphs")),
    ],
)
def test_generated_recipes_are_valid_and_match_their_generator(folder, count, datasets):
    expected = _generator(folder).all_recipes()
    on_disk = {p.name: p.read_text() for p in (RECIPES / folder).glob("*.yaml")}
    assert on_disk == expected, f"rerun recipes/{folder}/make_recipes.py"
    assert len(on_disk) == count
    for name in on_disk:
        config = load_config(RECIPES / folder / name)
        assert config.data.dataset in datasets


def test_mutual_recipes_state_the_papers_figures_and_cover_the_ablation():
    from metrictransfer.methods.mutual import ABLATION

    for dataset, figure in (("cub", "69.9"), ("cars", "89.1")):
        headline = (RECIPES / "mutual" / f"{dataset}_mutual.yaml").read_text()
        assert f"Recall@1 {figure}" in headline
        config = load_config(RECIPES / "mutual" / f"{dataset}_mutual.yaml")
        assert (config.model.backbone, config.model.embedding_dim, config.model.pretrained) == ("resnet50.tv_in1k", 512, True)
        assert config.data.normalization == "imagenet"  # torchvision's weights' own statistics
        assert (
            config.section(MutualConfig).model_diversity,
            config.section(MutualConfig).view_diversity,
            config.section(MutualConfig).taus(),
        ) == (True, True, [1, 2])
        independent = load_config(RECIPES / "mutual" / f"{dataset}_ablation_independent.yaml")
        assert independent.section(MutualConfig).weight == 0.0
        rows = {p.stem.split("_ablation_")[1] for p in (RECIPES / "mutual").glob(f"{dataset}_ablation_*.yaml")}
        assert rows | {"all"} == set(ABLATION)


@pytest.mark.parametrize(
    "backbone, expected",
    [
        ("resnet50.tv_in1k", "imagenet"),  # torchvision's weights, as the papers' code loads them
        ("inception_v3.tv_in1k", "inception"),
        ("vit_base_patch16_clip_224.openai", "clip"),
    ],
)
def test_normalization_model_is_the_backbones_own_convention(backbone, expected):
    config = build_config({}, [f"model.backbone={backbone}", "data.normalization=model"])
    assert config.data.normalization == expected  # stored resolved: the run folder says what was used


def test_normalization_model_refuses_a_cohort_whose_members_expect_different_inputs():
    with pytest.raises(ConfigError, match=r"expect different inputs \(imagenet, inception\)"):
        build_config(
            {
                "method": "mutual",
                "model": {"normalize": True},
                "mutual": {"members": 2, "backbones": ["resnet18", "inception_v3.tv_in1k"]},
                "data": {"normalization": "model"},
            }
        )


def test_inception_and_clip_statistics_normalise_as_their_weights_expect():
    import torch
    from PIL import Image

    from metrictransfer.data.transforms import NORMALIZATION_STATS, build_transform

    grey = Image.new("RGB", (8, 8), (128, 128, 128))
    for name in ("inception", "clip"):
        mean, std = NORMALIZATION_STATS[name]
        x = build_transform("glyphs", False, 8, name)(grey)
        expected = (128 / 255 - torch.tensor(mean)) / torch.tensor(std)
        torch.testing.assert_close(x[:, 0, 0], expected.float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dataset", ["cub", "cars", "sop"])
def test_table1_recipes_name_the_papers_backbones_and_weights(dataset):
    """The paper's own code: BN-Inception (Caffe weights, BGR 0-255) for self-transfer and dimension
    reduction, torchvision's ResNet-50 -> ResNet-18 for compression; targets' batch norm trains."""
    expected = {
        "self_transfer": ("bn_inception", 512, "bn_inception", "bn_inception"),
        "dim_reduction": ("bn_inception", 64, "bn_inception", "bn_inception"),
        "compression": ("resnet18.tv_in1k", 128, "imagenet", "resnet50"),
    }
    for setting, (backbone, dim, normalization, source) in expected.items():
        config = load_config(RECIPES / "table1" / f"{dataset}_{setting}_relaxed_contrastive.yaml")
        assert (config.model.backbone, config.model.embedding_dim, config.model.pretrained) == (backbone, dim, True)
        assert config.data.normalization == normalization and not config.model.freeze_batchnorm
        assert config.section(TransferConfig).source_checkpoint == f"runs/{dataset}-source-{source}-512"
    sources = {"source": ("resnet50.tv_in1k", "imagenet"), "source_bn_inception": ("bn_inception", "bn_inception")}
    for recipe, (backbone, normalization) in sources.items():
        config = load_config(RECIPES / f"{dataset}_{recipe}.yaml")
        assert (config.model.backbone, config.data.normalization) == (backbone, normalization)
        assert config.model.freeze_batchnorm == (dataset != "sop")  # Proxy-Anchor's --bn-freeze per dataset
