"""BN-Inception as the timm model "bn_inception": the published architecture, the port's key layout, weight loading.

tests/data/bn_inception_keys.json lists key → shape of the Cadene pretrainedmodels port (read off its
definition, not off our module), so the layout and parameter-count checks are independent of the code.
"""

import json
import urllib.error
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from metrictransfer.errors import (
    CheckpointError,
    DamagedCheckpointError,
    MissingFileError,
)
from metrictransfer.models import EmbeddingModel
from metrictransfer.models.bn_inception import WEIGHTS_URL, checkpoint_filter_fn
from metrictransfer.models.features import FeatureTaps, last_stages

PORT_SHAPES: dict[str, list[int]] = json.loads((Path(__file__).parents[1] / "fixtures" / "bn_inception_keys.json").read_text())["shapes"]
# Sum of the weights and biases in bn_inception_keys.json (the port's BNInception(num_classes=1000)):
# 10,270,240 in the network, plus last_linear's 1024 × 1000 + 1000 = 1,025,000.
PORT_PARAMETERS = 11_295_240
PORT_CLASSIFIER = 1024 * 1000 + 1000
# Output channels of the inception blocks (Figure 5 of Ioffe & Szegedy 2015; the port's concatenations), side at 224 px.
BLOCKS = {
    "3a": (256, 28),
    "3b": (320, 28),
    "3c": (576, 14),
    "4a": (576, 14),
    "4b": (576, 14),
    "4c": (608, 14),
    "4d": (608, 14),
    "4e": (1056, 7),
    "5a": (1024, 7),
    "5b": (1024, 7),
}


def port_state(row_vectors: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """A synthetic checkpoint with the port's names and shapes; ``row_vectors``: 1-D tensors stored as (1, C)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in PORT_SHAPES.items():
        value = torch.rand(shape, generator=generator) + (0.5 if key.endswith("running_var") else -0.5)
        state[key] = value.reshape(1, -1) if row_vectors and value.dim() == 1 else value
    return state


@pytest.fixture(scope="module")
def forward_at_224():
    """One forward of EmbeddingModel("bn_inception", 512) on two 224 px images, with every stage's map tapped."""
    torch.manual_seed(0)
    model = EmbeddingModel("bn_inception", 512).eval()
    names = [f"backbone.{e['module']}" for e in model.backbone.feature_info] + [f"backbone.inception_{b}_output" for b in BLOCKS]
    taps = FeatureTaps(model, names)
    with torch.no_grad(), taps.capture():
        embeddings = model(torch.randn(2, 3, 224, 224))
        maps = dict(zip(names, taps.features))
    taps.remove()
    return model, embeddings, maps


def test_embedding_model_embeds_from_a_1024_channel_7x7_map(forward_at_224):
    # Catches a wrong last block or head wiring: EmbeddingModel reads num_features and pools forward_features' map.
    model, embeddings, maps = forward_at_224
    assert model.feature_dim == model.backbone.num_features == 1024
    assert maps["backbone.inception_5b_output"].shape == (2, 1024, 7, 7)
    assert embeddings.shape == (2, 512) and torch.isfinite(embeddings).all()


def test_block_outputs_have_the_published_widths_and_sizes(forward_at_224):
    # Catches a wrong branch width, a missing/extra branch, or a stride in the wrong block (3c and 4e halve the map).
    _, _, maps = forward_at_224
    got = {b: (maps[f"backbone.inception_{b}_output"].shape[1], maps[f"backbone.inception_{b}_output"].shape[-1]) for b in BLOCKS}
    assert got == BLOCKS


def test_feature_info_names_maps_of_its_channels_and_reductions(forward_at_224):
    # Catches feature_info that disagrees with the maps hint losses (FitNet, attention) will be given.
    model, _, maps = forward_at_224
    info = model.backbone.feature_info
    assert [(maps[f"backbone.{e['module']}"].shape[1], 224 // maps[f"backbone.{e['module']}"].shape[-1]) for e in info] == [
        (e["num_chs"], e["reduction"]) for e in info
    ]
    assert [e["reduction"] for e in info] == [2, 4, 8, 16, 32]
    assert last_stages(model, 2) == ["backbone.inception_4d_output", "backbone.inception_5b_output"]


def test_layers_follow_the_port_where_strict_loading_cannot_tell():
    # Strides, pooling kinds, BN eps and conv biases change the numbers of the real weights without changing a key.
    net = timm.create_model("bn_inception", num_classes=0, global_pool="")
    conv1 = net.conv1_7x7_s2
    assert conv1.weight.shape == (64, 3, 7, 7) and conv1.stride == (2, 2) and conv1.padding == (3, 3)
    assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Conv2d))
    assert all(m.eps == 1e-5 and m.momentum == 0.1 and m.affine for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(m.ceil_mode for m in net.modules() if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)))
    for block in "3c", "4e":  # stride-2 blocks: no 1×1 branch, max pool passed through unprojected
        assert not hasattr(net, f"inception_{block}_1x1") and not hasattr(net, f"inception_{block}_pool_proj")
        assert getattr(net, f"inception_{block}_3x3").stride == getattr(net, f"inception_{block}_double_3x3_2").stride == (2, 2)
        pool = getattr(net, f"inception_{block}_pool")
        assert isinstance(pool, nn.MaxPool2d) and (pool.stride, pool.padding) == (2, 0)
    for block in "3a", "3b", "4a", "4b", "4c", "4d", "5a":
        pool = getattr(net, f"inception_{block}_pool")
        assert isinstance(pool, nn.AvgPool2d) and (pool.stride, pool.padding) == (1, 1) and pool.count_include_pad
    pool = net.inception_5b_pool  # the last block max-pools (Figure 5 of the paper)
    assert isinstance(pool, nn.MaxPool2d) and (pool.stride, pool.padding) == (1, 1)


def test_parameter_count_equals_the_ports():
    # Catches any layer of the wrong size or an extra/missing layer, counted against the port's own list.
    assert sum(torch.Size(s).numel() for k, s in PORT_SHAPES.items() if k.endswith(("weight", "bias"))) == PORT_PARAMETERS
    full = timm.create_model("bn_inception", num_classes=1000)
    assert sum(p.numel() for p in full.parameters()) == PORT_PARAMETERS
    headless = timm.create_model("bn_inception", num_classes=0, global_pool="")
    assert sum(p.numel() for p in headless.parameters()) == PORT_PARAMETERS - PORT_CLASSIFIER


@pytest.mark.parametrize("variant", ["as_saved", "row_vectors", "with_num_batches_tracked"])
def test_port_checkpoint_loads_strictly(variant):
    # Catches a renamed key or wrong shape (strict), and a filter that misses (1, C) copies or breaks BN counters.
    state = port_state(row_vectors=variant == "row_vectors")
    if variant == "with_num_batches_tracked":
        state |= {k.replace("running_mean", "num_batches_tracked"): torch.tensor(7) for k in PORT_SHAPES if k.endswith("running_mean")}
    model = timm.create_model("bn_inception", num_classes=1000)
    model.load_state_dict(checkpoint_filter_fn(state, model), strict=True)
    assert torch.equal(model.inception_5b_pool_proj_bn.running_var, state["inception_5b_pool_proj_bn.running_var"].flatten())
    assert torch.equal(model.last_linear.weight, state["last_linear.weight"])
    if variant == "as_saved":  # the port's own loading: no filter at all
        timm.create_model("bn_inception", num_classes=1000).load_state_dict(state, strict=True)


@pytest.mark.parametrize("row_vectors", [False, True])
def test_local_copy_of_the_port_file_loads_into_the_headless_backbone(tmp_path, row_vectors):
    # Catches model.weights refusing the port's classifier (last_linear.*) or its (1, C) tensors, offline.
    state = port_state(row_vectors=row_vectors)
    path = tmp_path / "bn_inception-52deb4733.pth"
    torch.save(state, path)
    model = EmbeddingModel("bn_inception", 8, weights=path)
    assert torch.equal(model.backbone.conv1_7x7_s2.weight, state["conv1_7x7_s2.weight"])
    assert torch.equal(model.backbone.conv1_7x7_s2_bn.bias, state["conv1_7x7_s2_bn.bias"].flatten())


def test_local_file_missing_a_key_is_still_refused(tmp_path):
    # Catches an allowance for the classifier or the squeeze that hides a real mismatch.
    state = port_state()
    del state["inception_4c_double_3x3_1_bn.running_var"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="inception_4c_double_3x3_1_bn.running_var"):
        EmbeddingModel("bn_inception", 8, weights=path)


def test_pretrained_downloads_once_with_the_hash_prefix_checked(tmp_path, monkeypatch):
    # Catches a wrong URL, a download without the SHA-256 prefix check, no caching, and pretrained weights not loaded.
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    state = port_state(row_vectors=True, seed=1)
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        torch.save(state, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    for _ in range(2):
        model = EmbeddingModel("bn_inception", 8, pretrained=True)
        assert torch.equal(model.backbone.inception_3a_3x3.weight, state["inception_3a_3x3.weight"])
    assert calls == [(WEIGHTS_URL, "52deb4733")]
    assert (tmp_path / "checkpoints" / "bn_inception-52deb4733.pth").is_file()


@pytest.mark.parametrize(
    "failure, error, message",
    [
        (
            urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
            MissingFileError,
            (
                r"^cannot download the bn_inception ImageNet weights from http://data\.lip6\.fr/cadene/pretrainedmodels/"
                r"bn_inception-52deb4733\.pth \(.*name resolution\): .*model\.weights: FILE"
            ),
        ),
        (
            RuntimeError('invalid hash value (expected "52deb4733", got "0123abcd")'),
            DamagedCheckpointError,
            r"^the file downloaded from .* SHA-256 does not start with 52deb4733",
        ),
    ],
)
def test_pretrained_download_failures_are_one_clear_line(tmp_path, monkeypatch, failure, error, message):
    # Catches an offline run ending in a urllib traceback instead of saying how to use a local copy.
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))

    def failing_download(url, dst, hash_prefix=None, progress=True):
        raise failure

    monkeypatch.setattr(torch.hub, "download_url_to_file", failing_download)
    with pytest.raises(error, match=message) as caught:
        EmbeddingModel("bn_inception", 8, pretrained=True)
    assert "\n" not in str(caught.value)
    assert not list(tmp_path.rglob("*.pth"))
