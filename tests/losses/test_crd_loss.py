"""CRD: the NCE objective against an independent computation, memory-bank updates, gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from metrictransfer.losses import CRDLoss, TransferShapes


def _crd(num_items=50, negatives=16):
    torch.manual_seed(0)
    loss_fn = CRDLoss(feat_dim=8, negatives=negatives, temperature=0.07, momentum=0.5)
    loss_fn.setup(TransferShapes(target_dim=6, source_dim=10))
    loss_fn.setup_items(num_items)
    return loss_fn


def _independent_nce(loss_fn, target, source, indices, drawn):
    """CRD's NCE loss written out from the paper's definitions, for given negative draws."""
    n, k, t = len(loss_fn.memory_source), loss_fn.negatives, loss_fn.temperature
    v_t = F.normalize(loss_fn.embed_target(target), dim=1)
    v_s = F.normalize(loss_fn.embed_source(source), dim=1)
    total = 0.0
    for bank, v, z in ((loss_fn.memory_target, v_s, None), (loss_fn.memory_source, v_t, None)):
        idx = torch.cat([indices.unsqueeze(1), drawn], 1)
        scores = torch.exp((bank[idx] * v.unsqueeze(1)).sum(2) / t)
        z = scores.mean() * n
        p = scores / z
        pn = 1.0 / n
        log_pos = torch.log(p[:, 0] / (p[:, 0] + k * pn + 1e-7))
        log_neg = torch.log(k * pn / (p[:, 1:] + k * pn + 1e-7))
        total = total - (log_pos.sum() + log_neg.sum()) / len(v)
    return total


def test_nce_matches_independent_formula_on_the_first_batch():
    loss_fn = _crd()
    target, source = torch.randn(5, 6), torch.randn(5, 10)
    indices = torch.tensor([3, 7, 7, 20, 41])
    banks = (loss_fn.memory_target.clone(), loss_fn.memory_source.clone())
    torch.manual_seed(123)
    ours = loss_fn(target, source, indices)
    torch.manual_seed(123)
    drawn = torch.randint(50, (5, 16))
    loss_fn.memory_target.copy_(banks[0]), loss_fn.memory_source.copy_(banks[1])
    expected = _independent_nce(loss_fn, target, source, indices, drawn)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)


def test_banks_move_with_momentum_and_normalisers_stay_fixed():
    loss_fn = _crd()
    target, source = torch.randn(4, 6, requires_grad=True), torch.randn(4, 10, requires_grad=True)
    indices = torch.tensor([0, 1, 2, 3])
    before = loss_fn.memory_source[indices].clone()
    loss = loss_fn(target, source, indices)
    first_z = loss_fn.normalizers.clone()
    loss.backward()
    v_s = F.normalize(loss_fn.embed_source(source.detach()), dim=1)
    expected = F.normalize(before * 0.5 + v_s * 0.5, dim=1)
    torch.testing.assert_close(loss_fn.memory_source[indices], expected)
    torch.testing.assert_close(loss_fn.memory_source[indices].norm(dim=1), torch.ones(4))
    assert source.grad is None and target.grad is not None
    assert loss_fn.embed_target.weight.grad is not None and loss_fn.embed_source.weight.grad is not None
    loss_fn(target, source, indices)
    assert torch.equal(loss_fn.normalizers, first_z) and (first_z > 0).all()


def test_unprepared_loss_says_what_to_call():
    with pytest.raises(RuntimeError, match=r"setup\(\.\.\.\) and setup_items"):
        CRDLoss()(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1]))


def test_bank_init_scale():
    loss_fn = _crd(num_items=1000)
    bound = 1 / math.sqrt(8 / 3)
    assert loss_fn.memory_target.abs().max() <= bound and loss_fn.memory_target.shape == (1000, 8)
