"""The relaxed multi-similarity loss against an independent loop form of the authors' definition, with
the views paired as their code pairs them (row i with row i + N/2), and in a transfer run."""

import math

import pytest
import torch

from metrictransfer.losses import RelaxedMultiSimilarityLoss, TransferInputs, build_transfer_loss


def _loop_relaxed_ms(t, s, sigma=1.0, delta=1.0, alpha=1.0, beta=2.0):
    """Per anchor, in plain Python over floats: rows i and i + N/2 are two views of one image."""
    n, half = len(t), len(t) // 2
    t, s = t.tolist(), s.tolist()

    def norm(v):
        return math.sqrt(sum(x * x for x in v))

    s_hat = [[x / norm(row) for x in row] for row in s]
    dist = [[norm([a - b for a, b in zip(t[i], t[j])]) for j in range(n)] for i in range(n)]
    means = [sum(row) / n for row in dist]
    losses = []
    for i in range(n):
        pull_sum = push_sum = 0.0
        for j in range(n):
            if j == i:
                continue
            d = dist[i][j] / means[i]
            same_image = abs(i - j) == half
            p = 1.0 if same_image else math.exp(-sum((a - b) ** 2 for a, b in zip(s_hat[i], s_hat[j])) / sigma)
            pull_sum += p * math.exp(alpha * d)
            push_sum += (1 - p) * math.exp(beta * (delta - d))
        losses.append(math.log(1 + pull_sum) / alpha + math.log(1 + push_sum) / beta)
    kept = [x for x in losses if x > 0]
    return sum(kept) / len(kept)


def _views(seed, images=5, dim_t=4, dim_s=6):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(2 * images, dim_t, generator=g, dtype=torch.float64)
    s = torch.randn(2 * images, dim_s, generator=g, dtype=torch.float64)
    indices = torch.arange(images).repeat(2)  # [view 1 of every image; view 2 of every image]
    return t, s, indices


@pytest.mark.parametrize("sigma,delta,alpha,beta", [(1.0, 1.0, 1.0, 2.0), (0.5, 1.5, 2.0, 10.0), (2.0, 0.7, 0.5, 1.0)])
def test_relaxed_ms_matches_the_loop_form(sigma, delta, alpha, beta):
    """Catches: a wrong weight on either term, the views not counted as certain positives, the anchor
    itself included, the target's distances not divided by their row mean, or a sum for a mean."""
    t, s, indices = _views(1)
    ours = RelaxedMultiSimilarityLoss(sigma, delta, alpha, beta)(t, s, indices)
    assert ours.item() == pytest.approx(_loop_relaxed_ms(t, s, sigma, delta, alpha, beta), rel=1e-10)


def test_the_views_are_paired_by_index_wherever_they_sit_in_the_batch():
    """Catches: pairing by position (the authors' i + N/2), which a batch in another order would break."""
    t, s, indices = _views(2)
    order = torch.randperm(len(t), generator=torch.Generator().manual_seed(0))
    loss = RelaxedMultiSimilarityLoss()
    assert loss(t[order], s[order], indices[order]).item() == pytest.approx(loss(t, s, indices).item(), rel=1e-12)
    assert loss(t, s, None).item() != pytest.approx(loss(t, s, indices).item(), rel=1e-3)  # the pairing matters


def test_relaxed_ms_gradient_and_invariances():
    """Catches: a gradient reaching the source, a wrong analytic gradient, and a dependence on the
    target's scale (the row-mean normalisation removes it)."""
    t, s, indices = _views(3)
    t.requires_grad_(True)
    loss = RelaxedMultiSimilarityLoss(sigma=0.8, delta=1.2)
    assert torch.autograd.gradcheck(lambda x: loss(x, s, indices), (t,))
    s_grad = s.clone().requires_grad_(True)
    assert not loss(t.detach(), s_grad, indices).requires_grad
    assert loss(3.7 * t, s, indices).item() == pytest.approx(loss(t, s, indices).item(), rel=1e-12)


def test_relaxed_ms_is_registered_and_reads_the_indices_from_the_inputs():
    """Catches: a loss a recipe cannot name, or one that silently ignores the batch's indices."""
    t, s, indices = _views(4)
    built = build_transfer_loss("relaxed_ms", {"scale_neg": 3.0}, "transfer.loss.params")
    assert isinstance(built, RelaxedMultiSimilarityLoss) and built.needs == {"indices"}
    direct = RelaxedMultiSimilarityLoss(scale_neg=3.0)(t, s, indices)
    assert built.compute(TransferInputs(t, s, indices=indices)).item() == pytest.approx(direct.item(), rel=1e-12)


@pytest.mark.parametrize("name", ["sigma", "delta", "scale_pos", "scale_neg"])
def test_relaxed_ms_refuses_non_positive_parameters(name):
    with pytest.raises(ValueError, match=f"{name} must be > 0"):
        RelaxedMultiSimilarityLoss(**{name: 0.0})
