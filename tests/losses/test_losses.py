import json
from pathlib import Path

import pytest
import torch

from metrictransfer.losses import RelaxedContrastiveLoss, build_metric_loss, pairwise_distances

REFERENCE = json.loads((Path(__file__).parents[1] / "fixtures" / "transfer_losses.json").read_text())["cases"]


def _naive_relaxed_contrastive(t, s, sigma, delta):
    """Independent loop form of DESIGN.md 1.1 (slow, obviously correct)."""
    n = len(t)
    s_hat = s / s.norm(dim=1, keepdim=True)
    dist = torch.stack([torch.stack([(t[i] - t[j]).norm() if i != j else t.new_zeros(()) for j in range(n)]) for i in range(n)])
    d = dist / dist.mean(dim=1, keepdim=True)
    total = t.new_zeros(())
    for i in range(n):
        for j in range(n):
            if i != j:
                w = torch.exp(-((s_hat[i] - s_hat[j]) ** 2).sum() / sigma)
                total = total + w * d[i, j] ** 2 + (1 - w) * torch.clamp(delta - d[i, j], min=0) ** 2
    return total / n


@pytest.mark.parametrize("case", REFERENCE)
def test_relaxed_contrastive_matches_reference(case):
    target = torch.tensor(case["student"], dtype=torch.float64, requires_grad=True)
    source = torch.tensor(case["teacher"], dtype=torch.float64)
    loss = RelaxedContrastiveLoss(sigma=case["sigma"], delta=case["delta"])(target, source)
    loss.backward()
    expected_grad = torch.tensor(case["relaxed_contrastive_grad"], dtype=torch.float64)
    assert loss.item() == pytest.approx(case["relaxed_contrastive"], rel=1e-9)
    torch.testing.assert_close(target.grad, expected_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("sigma,delta", [(1.0, 1.0), (0.5, 1.5), (2.0, 0.7)])
def test_relaxed_contrastive_matches_loop_formula(sigma, delta):
    g = torch.Generator().manual_seed(1)
    t = torch.randn(7, 5, generator=g, dtype=torch.float64)
    s = torch.randn(7, 9, generator=g, dtype=torch.float64)
    ours = RelaxedContrastiveLoss(sigma, delta)(t, s)
    assert ours.item() == pytest.approx(_naive_relaxed_contrastive(t, s, sigma, delta).item(), rel=1e-10)


def test_relaxed_contrastive_gradcheck():
    g = torch.Generator().manual_seed(2)
    t = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.randn(6, 3, generator=g, dtype=torch.float64)
    loss = RelaxedContrastiveLoss(sigma=0.8, delta=1.2)
    assert torch.autograd.gradcheck(lambda x: loss(x, s), (t,))


def test_relaxed_contrastive_no_gradient_to_source_and_scale_invariant():
    g = torch.Generator().manual_seed(3)
    t = torch.randn(10, 8, generator=g, dtype=torch.float64)
    s = torch.randn(10, 8, generator=g, dtype=torch.float64, requires_grad=True)
    loss = RelaxedContrastiveLoss()
    value = loss(t, s)
    assert not value.requires_grad  # the source is a constant
    # Row-mean normalisation makes the loss independent of the target's scale.
    assert loss(3.7 * t, s).item() == pytest.approx(value.item(), rel=1e-12)


def test_pairwise_distances_zero_diagonal_and_cdist():
    x = torch.randn(20, 6, dtype=torch.float64)
    d = pairwise_distances(x)
    assert torch.all(d.diagonal() == 0)
    torch.testing.assert_close(d, torch.cdist(x, x).fill_diagonal_(0), rtol=1e-9, atol=1e-6)


def test_relaxed_contrastive_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same N"):
        RelaxedContrastiveLoss()(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="sigma"):
        RelaxedContrastiveLoss(sigma=0)


@pytest.mark.parametrize("name", ["proxy_anchor", "triplet", "multi_similarity", "contrastive"])
def test_metric_losses_by_name(name):
    loss = build_metric_loss(name, num_classes=4, embedding_dim=8)
    emb = torch.randn(16, 8, requires_grad=True)
    labels = torch.arange(4).repeat_interleave(4)
    value = loss(emb, labels)
    value.backward()
    assert torch.isfinite(value) and emb.grad is not None


def test_unknown_metric_loss_lists_valid_names():
    with pytest.raises(ValueError, match="proxy_anchor.*triplet|contrastive.*proxy_anchor"):
        build_metric_loss("proxyanchor", 4, 8)
