"""Any timm model as a transfer source (transfer.source): its own features, frozen, at its own input size and
normalisation, fed the very same augmented view as the target."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from metrictransfer.config import build_config
from metrictransfer.data.transforms import to_model_input
from metrictransfer.engine.trainer import Trainer
from metrictransfer.errors import CheckpointError, ConfigError, MissingFileError
from metrictransfer.methods.transfer import TransferConfig
from metrictransfer.models.pretrained import PretrainedFeatures
from metrictransfer.normalization import NORMALIZATION_STATS

VIT = "vit_tiny_patch16_224"  # 5.7 M parameters at random: built for 32 px it has 4 patches


def test_features_are_the_models_own():
    """Catches a source that adds a head or pools differently from the model: pooled is timm's pre-logits output,
    cls the class token, avg_max the average plus maximum over the patch tokens or the feature map."""
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    vit = PretrainedFeatures(VIT, pretrained=False, features="pooled", image_size=32)
    tokens = vit.model.forward_features(images)
    assert torch.allclose(vit(images), vit.model.forward_head(tokens, pre_logits=True), atol=1e-6)
    vit.features = "cls"
    assert torch.allclose(vit(images), tokens[:, 0], atol=1e-6)
    vit.features = "avg_max"
    patches = tokens[:, vit.model.num_prefix_tokens :]
    assert torch.allclose(vit(images), patches.mean(1) + patches.amax(1), atol=1e-6)
    assert vit.embedding_dim == 192

    cnn = PretrainedFeatures("resnet10t", pretrained=False, features="avg_max", image_size=40)
    maps = cnn.model.forward_features(torch.randn(2, 3, 40, 40))
    x = torch.randn(2, 3, 40, 40)
    maps = cnn.model.forward_features(x)
    assert torch.allclose(cnn(x), maps.mean((2, 3)) + maps.amax((2, 3)), atol=1e-6)
    assert cnn.embedding_dim == 512


def test_a_vit_is_built_for_the_source_image_size_and_loads_weights_saved_at_another(tmp_path):
    """Catches position embeddings left at the pretrained size (the model would refuse 32-px inputs) and a weights
    file of the model at its pretrained size that does not load (timm's own filter resamples them)."""
    reference = timm.create_model(VIT, num_classes=0)  # 224 px: 196 patches
    torch.save(reference.state_dict(), tmp_path / "vit.pt")
    source = PretrainedFeatures(VIT, pretrained=False, weights=tmp_path / "vit.pt", image_size=32)
    assert source.model.pos_embed.shape[1] == 1 + 4
    assert torch.equal(source.model.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)
    assert source(torch.randn(2, 3, 32, 32)).shape == (2, 192)


def test_bad_weights_and_offline_pretrained_are_one_line_errors(tmp_path, monkeypatch):
    """Catches a missing file, another architecture's weights and an offline download failing in timm's words
    instead of naming the key to set."""
    with pytest.raises(MissingFileError, match="not found"):
        PretrainedFeatures("resnet10t", weights=tmp_path / "missing.pt")
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        PretrainedFeatures("resnet10t", weights=tmp_path / "r18.pt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    with pytest.raises(MissingFileError, match="transfer.source.weights"):
        PretrainedFeatures("resnet10t.c3_in1k", pretrained=True)
    with pytest.raises(ConfigError, match="no class token"):
        PretrainedFeatures("resnet10t", pretrained=False, features="cls")


def test_the_config_resolves_size_and_normalisation_and_checks_names():
    """Catches a stored configuration that does not say what the source was fed, unknown names accepted
    until the model is built, and a transfer given two sources."""
    config = build_config({"method": "transfer", "transfer": {"source": "vit_tiny_patch16_224.augreg_in21k"}})
    source = config.section(TransferConfig).source
    assert (source.image_size, source.normalization, source.pretrained) == (224, "inception", True)
    sized = build_config({"method": "transfer", "transfer": {"source": {"name": "resnet10t", "image_size": 48}}})
    assert sized.section(TransferConfig).source.image_size == 48
    with pytest.raises(ConfigError, match="transfer.source: unknown timm model 'resnet_nope'"):
        build_config({"method": "transfer", "transfer": {"source": "resnet_nope"}})
    with pytest.raises(ConfigError, match="no weights 'bad'"):
        build_config({"method": "transfer", "transfer": {"source": "resnet10t.bad"}})
    with pytest.raises(ConfigError, match="exactly one of"):
        build_config({"method": "transfer", "transfer": {"source": "resnet10t", "source_embeddings": "x.npz"}})


def _glyph_transfer(tmp_path, source: dict, **extra) -> dict:
    return {
        "method": "transfer",
        "seed": 3,
        "data": {"dataset": "glyphs", "num_classes": 6, "classes_per_batch": 6, "images_per_class": 1, "views": 2},
        "model": {"backbone": "resnet10t", "embedding_dim": 8},
        "transfer": {"source": source},
        "optim": {"epochs": 1, "lr": 1e-3},
        **extra,
    }


def test_source_and_target_get_the_same_augmented_view_each_their_own_way(tmp_path):
    """Catches two independent random crops (one per model), a view resized before it was augmented, and the
    wrong normalisation reaching either model: the source (48 px, [-1, 1]) sees the augmented view itself, the
    target (32 px, ImageNet statistics) that very view resized, so undoing each normalisation and resizing the
    source's input gives the target's, pixel for pixel."""
    source = {"name": VIT, "pretrained": False, "image_size": 48, "normalization": "inception"}
    trainer = Trainer(build_config(_glyph_transfer(tmp_path, source)), device_name="cpu", progress=False, callbacks=[])
    trainer.setup()
    method = trainer.method
    assert method.feeds == ((32, "imagenet"), (48, "inception"))
    seen = {}
    method.target.register_forward_pre_hook(lambda m, args: seen.__setitem__("target", args[0].clone()))
    method.source.register_forward_pre_hook(lambda m, args: seen.__setitem__("source", args[0].clone()))
    trainer.start_epoch()
    views = trainer.prepare_batch(next(iter(trainer.loader)))[0]
    assert views.shape[-1] == 48 and 0.0 <= float(views.min()) and float(views.max()) <= 1.0  # plain RGB views
    trainer.update(*trainer.prepare_batch(next(iter(trainer.loader))))

    def plain(x, normalization):
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION_STATS[normalization])
        return x * std + mean

    source_pixels, target_pixels = plain(seen["source"], "inception"), plain(seen["target"], "imagenet")
    assert source_pixels.shape[-1] == 48 and target_pixels.shape[-1] == 32
    assert torch.allclose(to_model_input(source_pixels, 32, "none"), target_pixels, atol=1e-5)
    # and the two views of each image differ (the augmentation is random): the check above is not vacuous
    assert not torch.allclose(source_pixels[0], source_pixels[1], atol=1e-3)


def test_the_source_stays_frozen_in_eval_mode_and_runs_in_the_run_precision(tmp_path):
    """Catches a source that learns (its weights or batch-norm statistics move), trains in train mode, or
    runs in float32 while the run asks for bf16."""
    source = {"name": "resnet10t", "pretrained": False, "image_size": 40}
    trainer = Trainer(build_config(_glyph_transfer(tmp_path, source, precision="bf16")), device_name="cpu", progress=False, callbacks=[])
    trainer.setup()
    method = trainer.method
    before = {k: v.clone() for k, v in method.source.state_dict().items()}
    assert method.source.autocast_dtype == torch.bfloat16
    assert not any(p.requires_grad for p in method.source.parameters())
    method.train()
    assert not method.source.training
    trainer.start_epoch()
    trainer.update(*trainer.prepare_batch(next(iter(trainer.loader))))
    after = method.source.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert "source" not in trainer.state_dict()["models"]  # checkpoints hold what trains, not the teacher


@pytest.mark.slow
def test_a_transfer_from_a_timm_source_trains_and_its_run_evaluates(tmp_path):
    """End to end: a run with a timm source at another size trains, evaluates on the test split, and is an
    ordinary run folder."""
    from metrictransfer.engine.trainer import train

    source = {"name": "resnet10t", "pretrained": False, "image_size": 40, "features": "avg_max"}
    results = train(build_config(_glyph_transfer(tmp_path, source)), tmp_path / "run", progress=False)
    assert 0.0 <= results["final"]["recall@1"] <= 1.0
    assert np.isfinite(results["history"][-1]["transfer_loss"])
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
