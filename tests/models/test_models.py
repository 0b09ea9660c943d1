import pytest
import torch

from metrictransfer.models import EmbeddingModel


def test_head_is_orthogonal_zero_bias_and_pooling_is_avg_plus_max():
    model = EmbeddingModel("resnet10t", embedding_dim=16)
    w = model.head.weight  # (16, feature_dim): orthogonal rows
    torch.testing.assert_close(w @ w.t(), torch.eye(16), atol=1e-5, rtol=0)
    assert torch.all(model.head.bias == 0)
    fmap = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(model.pool(fmap), fmap.mean((2, 3)) + fmap.amax((2, 3)))


@pytest.mark.parametrize("normalize", [False, True])
def test_small_input_and_optional_normalisation(normalize):
    model = EmbeddingModel("resnet10t", embedding_dim=8, normalize=normalize).eval()
    out = model(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 8)
    norms = out.norm(dim=1)
    assert torch.allclose(norms, torch.ones(3), atol=1e-5) == normalize


def test_local_weights_file_is_loaded(tmp_path):
    trained = EmbeddingModel("resnet10t", embedding_dim=8)
    torch.nn.init.normal_(trained.backbone.conv1[0].weight)
    path = tmp_path / "backbone.pt"
    torch.save(trained.backbone.state_dict(), path)
    loaded = EmbeddingModel("resnet10t", embedding_dim=8, weights=path)
    assert torch.equal(loaded.backbone.conv1[0].weight, trained.backbone.conv1[0].weight)


def test_bad_backbone_or_weights_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown timm backbone 'resnet1008'"):
        EmbeddingModel("resnet1008")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        EmbeddingModel("resnet10t", weights=tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save(EmbeddingModel("resnet18").backbone.state_dict(), other)
    with pytest.raises(ValueError, match="do not fit the backbone"):
        EmbeddingModel("resnet10t", weights=other)
