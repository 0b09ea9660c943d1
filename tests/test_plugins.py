"""Components from outside the package: a plug-in found through its entry point (no pip: a package and its
``.dist-info`` written to a temporary folder on sys.path), names that clash, unknown names, and the names
the command line's help reads from source."""

from __future__ import annotations

import sys
import textwrap

import pytest

from metrictransfer.config import build_config
from metrictransfer.errors import ConfigError
from metrictransfer.methods.transfer import TransferConfig
from metrictransfer.registry import ALL, BACKBONES, METRIC_LOSSES, MINERS, TRANSFER_LOSSES, register_transfer_loss

PLUGIN_LOSS = '''
import torch.nn.functional as F

from metrictransfer.losses import TransferLoss
from metrictransfer.registry import register_transfer_loss


@register_transfer_loss("plugin_cosine")
class PluginCosineLoss(TransferLoss):
    """1 - cosine similarity of the two embeddings (same size), times scale."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, target, source):
        return self.scale * (1 - F.cosine_similarity(target, source.detach(), dim=1).mean())
'''


@pytest.fixture
def install_plugin(tmp_path, monkeypatch):
    """``install(package, group, names, source)``: what ``pip install`` of a plug-in leaves for
    importlib.metadata, without pip: the package, and a ``.dist-info`` whose ``entry_points.txt`` names the
    package's module in ``group``, in a temporary folder put first on sys.path. The imported modules go
    afterwards."""
    installed = []

    def install(package: str, group: str, names: list[str], source: str) -> None:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{package}-0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.0\n")
        (info / "entry_points.txt").write_text(f"[{group}]\n" + "".join(f"{name} = {package}\n" for name in names))
        installed.append(package)

    monkeypatch.syspath_prepend(str(tmp_path))  # also invalidates importlib's caches
    yield install
    for package in installed:
        sys.modules.pop(package, None)


@pytest.fixture
def rediscovered(monkeypatch):
    """TRANSFER_LOSSES as a new process would find it, restored afterwards.

    A fresh ``Registry(...)`` would search the entry points, but the plug-in's decorator registers into the
    global TRANSFER_LOSSES (``register_transfer_loss`` is its method), so the global registry itself is made
    to search again: it searches its package and the entry points once, at the first lookup of the process,
    and ``_discovered`` (private) records that this has happened. Searching again imports the package's
    modules from sys.modules (no decorator runs twice) and loads the entry points, the new one included."""
    saved = TRANSFER_LOSSES.snapshot()
    monkeypatch.setattr(TRANSFER_LOSSES, "_discovered", False)  # set back to True by monkeypatch's undo
    yield saved
    TRANSFER_LOSSES.restore(saved)


def test_a_plugin_registers_through_its_entry_point(tmp_path, install_plugin, rediscovered):
    assert "plugin_cosine" not in rediscovered
    install_plugin("mt_plugin_cosine", "metrictransfer.transfer_losses", ["plugin_cosine"], PLUGIN_LOSS)

    assert "plugin_cosine" in TRANSFER_LOSSES.names()  # the first lookup searched the entry points
    plugin = sys.modules["mt_plugin_cosine"]
    assert TRANSFER_LOSSES["plugin_cosine"] is plugin.PluginCosineLoss
    assert set(rediscovered) < set(TRANSFER_LOSSES.names())  # the built-in ones are still there

    source = {"method": "transfer", "transfer": {"source_checkpoint": str(tmp_path / "source")}}
    config = build_config({**source, "transfer": {**source["transfer"], "loss": {"name": "plugin_cosine"}}})
    assert config.section(TransferConfig).loss.name == "plugin_cosine" and config.section(TransferConfig).loss.params == {}
    config = build_config({**source, "transfer": {**source["transfer"], "loss": {"name": "plugin_cosine", "params": {"scale": 2}}}})
    assert config.section(TransferConfig).loss.params == {"scale": 2}
    with pytest.raises(ConfigError, match=r"transfer\.loss\.params\.scael"):  # its signature is checked like a built-in's
        build_config({**source, "transfer": {**source["transfer"], "loss": {"name": "plugin_cosine", "params": {"scael": 2}}}})


def test_a_plugin_that_fails_to_import_says_so(install_plugin, rediscovered):
    install_plugin(
        "mt_plugin_broken",
        "metrictransfer.transfer_losses",
        ["broken"],
        "raise ImportError('mt_plugin_broken needs a library that is not installed')\n",
    )
    with pytest.raises(Exception, match="mt_plugin_broken needs"):  # loud, with the plug-in's own reason
        TRANSFER_LOSSES.names()


def _other_loss():
    """A class of the same qualified name each call, as a script run twice (a notebook cell) defines."""
    from metrictransfer.losses import TransferLoss

    class AnotherLoss(TransferLoss):
        def forward(self, target, source):
            return (target - source).pow(2).mean()

    return AnotherLoss


def test_a_second_class_under_a_taken_name_is_refused():
    saved = TRANSFER_LOSSES.snapshot()
    try:
        with pytest.raises(ValueError, match=r"transfer loss 'rkd' is already registered by metrictransfer\.losses\.relational\.RKDLoss"):
            register_transfer_loss("rkd")(_other_loss())
        assert TRANSFER_LOSSES["rkd"].__name__ == "RKDLoss"  # unchanged

        register_transfer_loss("another")(_other_loss())
        again = _other_loss()
        register_transfer_loss("another")(again)  # the same definition run again replaces the first
        assert TRANSFER_LOSSES["another"] is again
    finally:
        TRANSFER_LOSSES.restore(saved)


def test_the_clash_names_both_components():
    saved = TRANSFER_LOSSES.snapshot()
    try:
        with pytest.raises(ValueError) as err:
            register_transfer_loss("rkd")(_other_loss())
        assert "RKDLoss" in str(err.value) and "AnotherLoss" in str(err.value)
    finally:
        TRANSFER_LOSSES.restore(saved)


@pytest.mark.parametrize("registry", ALL, ids=[registry.kind for registry in ALL])
def test_an_unknown_name_lists_the_valid_ones(registry):
    with pytest.raises(ConfigError) as err:
        registry.get("no_such_component", "some.key")
    message = str(err.value)
    assert message.startswith(f"unknown {registry.kind} 'no_such_component' (some.key); valid names: ")
    assert message.rpartition("valid names: ")[2].split(", ") == registry.names()


def test_an_unknown_name_in_a_recipe_names_the_key_and_the_valid_names():
    with pytest.raises(ConfigError) as err:
        build_config({"method": "transfer", "transfer": {"source_checkpoint": "runs/source", "loss": "rdk"}})
    message = str(err.value)
    assert "transfer: unknown transfer loss 'rdk'" in message
    assert message.rpartition("valid names: ")[2].split(", ") == TRANSFER_LOSSES.names()


@pytest.mark.parametrize("registry", ALL, ids=[registry.kind for registry in ALL])
def test_names_read_from_source_are_the_registered_ones(registry):
    """``declared_names()`` (the command line's torch-free help) finds every ``@register_x("name")`` of the
    package. Metric losses and miners also hold every pytorch-metric-learning class, registered in a loop,
    and backbones every timm model, so for those the declared names are only a part."""
    declared, registered = registry.declared_names(), registry.names()
    assert declared
    if registry in (METRIC_LOSSES, MINERS, BACKBONES):
        assert set(declared) <= set(registered), set(declared) - set(registered)
    else:
        assert declared == registered


TIMM_BACKBONE = """
from timm.models import register_model
from timm.models.resnet import resnet10t

from metrictransfer.registry import register_backbone


@register_backbone("mt_plugin_resnet")
@register_model
def mt_plugin_resnet(pretrained=False, **kwargs):
    return resnet10t(pretrained=False, **kwargs)
"""


def test_a_plugin_backbone_is_found_when_the_model_is_built(install_plugin, monkeypatch):
    import timm.models._registry as timm_registry

    from metrictransfer.models import EmbeddingModel

    saved = BACKBONES.snapshot()
    monkeypatch.setattr(BACKBONES, "_discovered", False)  # as for TRANSFER_LOSSES above
    tables = {
        name: table.copy() for name, table in vars(timm_registry).items() if not name.startswith("__") and isinstance(table, (dict, set))
    }
    install_plugin("mt_plugin_resnet", "metrictransfer.backbones", ["mt_plugin_resnet"], TIMM_BACKBONE)
    try:
        assert EmbeddingModel("mt_plugin_resnet", 8).backbone_name == "mt_plugin_resnet"
    finally:
        BACKBONES.restore(saved)
        for name, table in tables.items():  # timm's registry is global: take the plug-in's model out again
            current = getattr(timm_registry, name)
            current.clear()
            current.update(table)
