"""Training on several processes (GPUs, nodes) launched by torchrun.

Every rank runs the same loop on its own slice of each global batch. Pairwise losses must see the whole
batch, so methods pass their embeddings (and labels, indices, source embeddings) through :func:`gather`
before a loss. Every rank then computes the same global loss; :func:`gather`'s backward sums the
ranks' identical gradients for each rank's own slice (N × the true gradient), and :func:`average_gradients`
divides the summed parameter gradients by N again, so N ranks × B images give exactly the gradient of
1 process × N·B images. Losses that stay local (hint losses on feature maps, cross-entropy) are means
over the rank's images; averaging them over ranks gives their mean over the global batch.

Outside torchrun (no ``WORLD_SIZE`` in the environment) everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, cast, overload

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Only the main rank writes files and prints."""
        return self.rank == 0


def setup(device_name: str) -> tuple[Ranks, str]:
    """Join the process group torchrun describes in the environment (gloo on CPU, NCCL on GPUs) and
    return this rank and its device name (``cuda:LOCAL_RANK`` on GPUs)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), device_name
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(ranks.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return ranks, f"cuda:{ranks.local_rank}" if use_cuda else "cpu"


def current() -> Ranks:
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _sizes(x: torch.Tensor) -> list[int]:
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def _all_gather_rows(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's rows in rank order; ranks may hold different numbers of rows."""
    longest = max(sizes)
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


class _GatherRows(torch.autograd.Function):
    """All-gather whose backward returns to each rank the sum over ranks of the gradient for its rows.

    Written here rather than taken from torch.distributed.nn because ranks may hold different numbers of
    rows (unreadable images skipped) and the gloo backend must work (CI runs on CPUs)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        sizes = _sizes(x)
        rank = dist.get_rank()
        ctx.rows = (sum(sizes[:rank]), sizes[rank])
        return _all_gather_rows(x, sizes)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start, count = ctx.rows
        return grad[start : start + count]


@overload
def gather(x: torch.Tensor) -> torch.Tensor: ...


@overload
def gather(x: None) -> None: ...


def gather(x: torch.Tensor | None) -> torch.Tensor | None:
    """The global batch's rows of ``x`` on every rank, in rank order; gradients flow back to each rank's
    own rows. ``x`` itself outside distributed training, or when it is None."""
    if x is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    if x.requires_grad:
        return cast(torch.Tensor, _GatherRows.apply(x))
    return _all_gather_rows(x, _sizes(x))


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its mean over ranks, in one flat all-reduce.

    Done once per optimiser update rather than during backward (as DistributedDataParallel does): a
    method owns several models and loss parameters, and cohort members accumulate gradients over
    several iterations, which one reduce per update covers exactly. Every rank computes the same
    losses, so every rank has gradients for the same parameters."""
    world = current().world
    if world == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def step_flags(finite: bool, stop: bool, device: torch.device) -> tuple[bool, bool]:
    """Whether the step's loss is finite on every rank, and whether any rank was asked to stop, so that
    all ranks skip, fail or stop at the same step (one small all-reduce)."""
    if current().world == 1:
        return finite, stop
    flags = torch.tensor([0 if finite else 1, 1 if stop else 0], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return not bool(flags[0]), bool(flags[1])


def barrier() -> None:
    if current().world > 1:
        dist.barrier()
