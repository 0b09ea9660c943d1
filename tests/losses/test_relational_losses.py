"""RKD, PKT and DarkRank against the reference values (authors' formulas, float64) and independent forms."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from metrictransfer.losses import TRANSFER_LOSSES, DarkRankLoss, PKTLoss, RKDAngleLoss, RKDDistanceLoss, RKDLoss

CASES = json.loads((Path(__file__).parents[1] / "fixtures" / "transfer_losses.json").read_text())["cases"]
LOSSES = {
    "rkd_distance": lambda case: RKDDistanceLoss(),
    "rkd_angle": lambda case: RKDAngleLoss(chunk=3),
    "pkt": lambda case: PKTLoss(),
    "darkrank": lambda case: DarkRankLoss(**case["darkrank_params"]),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("case", CASES)
def test_matches_reference_loss_and_gradient(name, case):
    target = torch.tensor(case["student"], dtype=torch.float64, requires_grad=True)
    source = torch.tensor(case["teacher"], dtype=torch.float64)
    loss = LOSSES[name](case)(target, source)
    loss.backward()
    assert loss.item() == pytest.approx(case[name], rel=1e-9)
    torch.testing.assert_close(target.grad, torch.tensor(case[f"{name}_grad"], dtype=torch.float64), rtol=1e-9, atol=1e-12)


def _naive_rkd_angle(t, s):
    """The original N × N × D form: normalised difference vectors at every anchor, all triples."""

    def angles(x):
        diff = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
        return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)

    with torch.no_grad():
        source_angles = angles(s)
    return F.smooth_l1_loss(angles(t), source_angles)


@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunked_rkd_angle_equals_naive_form(chunk):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(23, 12, dtype=torch.float64, generator=g)
    t1 = torch.randn(23, 5, dtype=torch.float64, generator=g, requires_grad=True)
    t2 = t1.detach().clone().requires_grad_(True)
    ours = RKDAngleLoss(chunk=chunk)(t1, s)
    naive = _naive_rkd_angle(t2, s)
    ours.backward()
    naive.backward()
    assert ours.item() == pytest.approx(naive.item(), rel=1e-10)
    torch.testing.assert_close(t1.grad, t2.grad, rtol=1e-9, atol=1e-13)


def test_rkd_angle_builds_each_chunk_once_and_never_keeps_n_cubed(monkeypatch):
    """Cosines are only ever built as chunk × N × N blocks (never N × N × D), once each: the gradient is
    accumulated in the forward pass, so backward builds none and nothing O(N³) is kept for it."""
    from metrictransfer.losses import relational

    shapes = []
    original = relational._angle_cosines

    def recording(anchors, gram, inv_dist):
        out = original(anchors, gram, inv_dist)
        shapes.append(tuple(out[0].shape))
        return out

    monkeypatch.setattr(relational, "_angle_cosines", recording)
    t = torch.randn(64, 128, requires_grad=True)
    loss = RKDAngleLoss(chunk=4)(t, torch.randn(64, 128))
    assert set(shapes) == {(4, 64, 64)} and len(shapes) == 2 * 16  # source and target cosines of 16 chunks
    angle_node = loss.grad_fn.next_functions[0][0]  # the loss divided by N³
    assert [tuple(x.shape) for x in angle_node.saved_tensors] == [(64, 64), (64, 64)]  # gradients w.r.t. G and 1/d
    loss.backward()
    assert len(shapes) == 2 * 16 and t.grad is not None


def test_automatic_chunks_keep_blocks_small_and_give_the_same_loss():
    g = torch.Generator().manual_seed(3)
    t, s = torch.randn(200, 8, generator=g, dtype=torch.float64), torch.randn(200, 8, generator=g, dtype=torch.float64)
    auto = RKDAngleLoss()
    assert auto.anchors_per_chunk(200, t.device) * 200 * 200 <= 2**18
    assert auto.anchors_per_chunk(2000, t.device) == 1
    assert auto(t, s).item() == pytest.approx(RKDAngleLoss(chunk=200)(t, s).item(), rel=1e-12)


def test_rkd_angle_gradient_passes_gradcheck():
    g = torch.Generator().manual_seed(4)
    t = torch.randn(9, 3, dtype=torch.float64, generator=g, requires_grad=True)
    s = torch.randn(9, 5, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda x: RKDAngleLoss(chunk=4)(x, s), (t,))


def test_rkd_is_distance_plus_twice_angle():
    g = torch.Generator().manual_seed(1)
    t, s = torch.randn(10, 4, generator=g), torch.randn(10, 6, generator=g)
    expected = RKDDistanceLoss()(t, s) + 2 * RKDAngleLoss()(t, s)
    assert RKDLoss()(t, s).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["rkd_distance", "rkd_angle", "pkt", "darkrank", "rkd"])
def test_no_gradient_reaches_the_source_and_registry_names(name):
    source = torch.randn(12, 6, requires_grad=True)
    target = torch.randn(12, 3, requires_grad=True)
    TRANSFER_LOSSES[name]()(target, source).backward()
    assert source.grad is None and target.grad is not None and torch.isfinite(target.grad).all()


def test_distance_based_losses_ignore_the_targets_scale():
    g = torch.Generator().manual_seed(2)
    t, s = torch.randn(10, 4, generator=g), torch.randn(10, 6, generator=g)
    for loss_fn in (RKDDistanceLoss(), RKDAngleLoss(), PKTLoss(), DarkRankLoss()):
        assert loss_fn(3.0 * t, s).item() == pytest.approx(loss_fn(t, s).item(), rel=1e-5)


@pytest.mark.parametrize("loss_fn", [RKDDistanceLoss(), RKDAngleLoss(), PKTLoss(), DarkRankLoss()])
def test_bad_shapes_are_named(loss_fn):
    with pytest.raises(ValueError, match="same N images"):
        loss_fn(torch.randn(5, 2), torch.randn(4, 2))
