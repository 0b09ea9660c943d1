"""proj_cosine and proj_mse: feature regression through a learned projector, against numpy."""

import io

import numpy as np
import pytest
import torch

from metrictransfer.errors import ConfigError
from metrictransfer.losses import TransferInputs, TransferShapes, build_transfer_loss
from metrictransfer.losses.regression import ProjectedCosineLoss, ProjectedMSELoss

T_DIM, S_DIM = 5, 7


def _loss(cls, seed=0, **params):
    torch.manual_seed(seed)
    loss_fn = cls(**params)
    loss_fn.setup(TransferShapes(target_dim=T_DIM, source_dim=S_DIM))
    return loss_fn


def _inputs(n=6, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(n, T_DIM, generator=g, dtype=dtype)
    source = 30.0 * torch.randn(n, S_DIM, generator=g, dtype=dtype) + 4.0  # raw features: large, off-centre
    return target, source


def _projected(loss_fn, target):
    w = loss_fn.projector.weight.detach().double().numpy()
    b = loss_fn.projector.bias.detach().double().numpy()
    return target.detach().double().numpy() @ w.T + b


def _unit(x):
    return x / np.sqrt((x**2).sum(axis=1, keepdims=True))


def test_proj_cosine_matches_numpy():
    """Catches a wrong cosine (unnormalised dot product, a sum instead of the mean over rows, 1 + cos)."""
    loss_fn = _loss(ProjectedCosineLoss).double()
    target, source = _inputs()
    p, s = _projected(loss_fn, target), source.numpy()
    expected = np.mean(1.0 - (p * s).sum(axis=1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(s, axis=1)))
    assert loss_fn(target, source).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
def test_proj_mse_matches_numpy(normalize):
    """Catches a missing (or one-sided) normalisation, or a mean over rows instead of over all entries."""
    loss_fn = _loss(ProjectedMSELoss, normalize=normalize).double()
    target, source = _inputs()
    p, s = _projected(loss_fn, target), source.numpy()
    if normalize:
        p, s = _unit(p), _unit(s)
    expected = np.mean((p - s) ** 2)
    assert loss_fn(target, source).item() == pytest.approx(expected, rel=1e-12)


def test_normalised_mse_is_the_cosine_loss_scaled_by_two_over_source_dim():
    """Catches a docstring that misstates how the normalised MSE relates to proj_cosine (same projector)."""
    cosine, mse = _loss(ProjectedCosineLoss, seed=3).double(), _loss(ProjectedMSELoss, seed=3).double()
    target, source = _inputs(seed=4)
    assert mse(target, source).item() == pytest.approx(cosine(target, source).item() * 2 / S_DIM, rel=1e-10)


@pytest.mark.parametrize("cls", [ProjectedCosineLoss, ProjectedMSELoss])
def test_gradients_reach_projector_and_target_not_source(cls):
    """Catches a source that is not detached, or a projector the optimiser would not see."""
    loss_fn = _loss(cls)
    target, source = _inputs(dtype=torch.float32)
    target.requires_grad_(True)
    source.requires_grad_(True)
    loss_fn.compute(TransferInputs(target, source)).backward()
    assert {name for name, _ in loss_fn.named_parameters()} == {"projector.weight", "projector.bias"}
    assert loss_fn.projector.weight.grad.abs().sum() > 0 and loss_fn.projector.bias.grad.abs().sum() > 0
    assert target.grad.abs().sum() > 0
    assert source.grad is None


@pytest.mark.parametrize("cls", [ProjectedCosineLoss, ProjectedMSELoss])
def test_bf16_inputs_are_computed_in_float32(cls):
    """Catches bf16 inputs failing against the float32 projector or being computed in bf16."""
    loss_fn = _loss(cls)
    target, source = (x.to(torch.bfloat16) for x in _inputs(dtype=torch.float32))
    value = loss_fn(target, source)
    assert value.dtype == torch.float32
    assert value.item() == loss_fn(target.float(), source.float()).item()


@pytest.mark.parametrize("cls", [ProjectedCosineLoss, ProjectedMSELoss])
def test_one_row_is_enough(cls):
    """Catches compute() applying the base class's two-row minimum to a pointwise loss."""
    target, source = _inputs(n=1, dtype=torch.float32)
    assert torch.isfinite(_loss(cls).compute(TransferInputs(target, source)))


@pytest.mark.parametrize("cls", [ProjectedCosineLoss, ProjectedMSELoss])
def test_use_before_setup_and_bad_shapes_are_clear_errors(cls):
    """Catches an AttributeError / matmul error deep in torch instead of a message that says what to do."""
    target, source = _inputs(dtype=torch.float32)
    with pytest.raises(RuntimeError, match=rf"{cls.__name__}\.setup"):
        cls()(target, source)
    loss_fn = _loss(cls)
    with pytest.raises(ValueError, match="same N"):
        loss_fn(target, source[:4])
    with pytest.raises(ValueError, match="set up for target × source dimensions 5 × 7, got 5 × 3"):
        loss_fn(target, source[:, :3])


@pytest.mark.parametrize("cls", [ProjectedCosineLoss, ProjectedMSELoss])
def test_state_dict_round_trip_keeps_the_projector(cls):
    """Catches a projector that a checkpoint does not carry (a resumed run would restart it at random)."""
    trained = _loss(cls, seed=5)
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    fresh = _loss(cls, seed=6)
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    target, source = _inputs(dtype=torch.float32)
    assert fresh(target, source).item() == trained(target, source).item()


def test_found_by_name_with_checked_parameters():
    """Catches a loss that is not registered, or parameters that are not checked against the signature."""
    assert isinstance(build_transfer_loss("proj_cosine", {}), ProjectedCosineLoss)
    assert build_transfer_loss("proj_mse", {}).normalize is True
    assert build_transfer_loss("proj_mse", {"normalize": False}).normalize is False
    with pytest.raises(ConfigError, match="unexpected keyword argument 'normalise'.*its parameters: normalize"):
        build_transfer_loss("proj_mse", {"normalise": False})
    with pytest.raises(ConfigError, match="normalize expects true or false"):
        build_transfer_loss("proj_mse", {"normalize": "yes"})
    with pytest.raises(ConfigError, match="unexpected keyword argument 'scale'.*its parameters: none"):
        build_transfer_loss("proj_cosine", {"scale": 2.0})
