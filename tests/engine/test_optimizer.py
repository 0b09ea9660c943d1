"""Adam and AdamW run PyTorch's fused kernel where it can (CUDA; the CPU from torch 2.4), and its update is
the for-loop implementation's to rounding."""

import pytest
import torch

from metrictransfer.config import OptimConfig
from metrictransfer.engine.trainer import build_optimizer

CPU_FUSED = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in [(64, 32), (32,), (7, 3, 3, 3)]]


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_is_fused_on_the_cpu_and_updates_like_the_for_loop(name):
    config = OptimConfig(optimizer=name, lr=1e-2, weight_decay=1e-2)
    fused_params, loop_params = _params(), _params()
    optimizer = build_optimizer([{"params": fused_params}], config)
    assert optimizer.defaults["fused"] is (True if CPU_FUSED else None)
    reference_type = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    assert type(optimizer) is reference_type
    reference = reference_type(loop_params, lr=1e-2, weight_decay=1e-2, foreach=False, fused=False)
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):  # the same gradients for both: the updates alone are compared
        for a, b in zip(fused_params, loop_params):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        optimizer.step()
        reference.step()
    for a, b in zip(fused_params, loop_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not torch.equal(fused_params[0], _params()[0])  # they moved


def test_sgd_and_parameters_the_kernel_cannot_take_stay_unfused():
    assert not build_optimizer([{"params": _params()}], OptimConfig(optimizer="sgd", lr=0.1)).defaults.get("fused")
    meta = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    assert build_optimizer([{"params": meta}], OptimConfig(optimizer="adamw", lr=0.1)).defaults["fused"] is None
