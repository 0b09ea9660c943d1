"""FitNet and Attention transfer on feature maps taken with forward hooks."""

import pytest
import torch
import torch.nn.functional as F

from metrictransfer.losses import AttentionLoss, FitNetLoss, TransferShapes
from metrictransfer.models import EmbeddingModel
from metrictransfer.models.features import FeatureTaps, feature_shapes, last_stages


def test_taps_capture_stage_outputs_without_changing_the_forward():
    torch.manual_seed(0)
    model = EmbeddingModel("resnet10t", 8).eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    names = last_stages(model, 2)
    assert names == ["backbone.layer3", "backbone.layer4"]
    taps = FeatureTaps(model, names)
    with taps.capture():
        after = model(x)
        torch.testing.assert_close(before, after)
        expected = model.backbone.layer4(taps.features[0])
        torch.testing.assert_close(taps.features[1], expected)
    with pytest.raises(RuntimeError, match="no output captured"):  # released when the step ends
        _ = taps.features
    model(x)  # a pass outside any capture (evaluation) keeps nothing
    with pytest.raises(RuntimeError, match="no output captured"):
        _ = taps.features
    assert feature_shapes(model, names, 32) == [torch.Size([256, 2, 2]), torch.Size([512, 1, 1])]
    taps.remove()
    with pytest.raises(ValueError, match="no submodule 'backbone.layer9'"):
        FeatureTaps(model, ["backbone.layer9"])


def test_fitnet_with_identity_regressors_is_the_mse_and_trains_them():
    t = [torch.randn(4, 3, 5, 5, requires_grad=True)]
    s = [torch.randn(4, 3, 5, 5)]
    loss_fn = FitNetLoss()
    loss_fn.setup(TransferShapes(3, 3, target_channels=[3], source_channels=[3]))
    with torch.no_grad():
        loss_fn.regressors[0].weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    loss = loss_fn(t, s)
    assert loss.item() == pytest.approx(F.mse_loss(t[0], s[0]).item(), rel=1e-6)
    loss.backward()
    assert loss_fn.regressors[0].weight.grad is not None and t[0].grad is not None


def test_fitnet_maps_channels_and_sizes():
    loss_fn = FitNetLoss()
    loss_fn.setup(TransferShapes(16, 64, target_channels=[8, 16], source_channels=[32, 64]))
    t = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    s = [torch.randn(2, 32, 4, 4), torch.randn(2, 64, 4, 4)]
    assert torch.isfinite(loss_fn(t, s))
    with pytest.raises(RuntimeError, match=r"FitNetLoss\.setup"):
        FitNetLoss()(t, s)


def test_attention_loss_matches_its_formula_and_ignores_scale():
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(3, 6, 4, 4, generator=g)]
    s = [torch.randn(3, 10, 4, 4, generator=g)]

    def at(f):
        a = (f**2).mean(1).reshape(len(f), -1)
        return a / a.norm(dim=1, keepdim=True)

    expected = ((at(t[0]) - at(s[0])) ** 2).mean()
    assert AttentionLoss()(t, s).item() == pytest.approx(expected.item(), rel=1e-6)
    assert AttentionLoss()([5 * t[0]], s).item() == pytest.approx(expected.item(), rel=1e-5)
