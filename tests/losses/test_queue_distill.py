"""queue_distill: pseudo-classifier distillation against a FIFO queue of teacher features, against numpy."""

import io

import numpy as np
import pytest
import torch

from metrictransfer.config import build_config
from metrictransfer.errors import ConfigError
from metrictransfer.losses import TRANSFER_LOSSES, TransferInputs, TransferShapes, build_transfer_loss
from metrictransfer.losses.queue_distill import QueueDistillLoss
from metrictransfer.methods.transfer import TransferConfig

T_DIM, S_DIM = 4, 6
TAU_T, TAU_S = 0.07, 0.1


def _loss(queue_size=5, seed=0, dtype=torch.float64, **params):
    torch.manual_seed(seed)
    loss_fn = QueueDistillLoss(queue_size=queue_size, teacher_temperature=TAU_T, student_temperature=TAU_S, **params)
    loss_fn.setup(TransferShapes(target_dim=T_DIM, source_dim=S_DIM))
    return loss_fn.to(dtype)


def _batch(n, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, T_DIM, generator=g, dtype=dtype), 20.0 * torch.randn(n, S_DIM, generator=g, dtype=dtype)


def _unit(x):
    return x / np.sqrt((x**2).sum(axis=1, keepdims=True))


def _log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _reference(loss_fn, target, source, queue_rows):
    """The loss written out in numpy: ``queue_rows`` are the queue's filled rows (none: the batch's own)."""
    z_t = _unit(source.numpy())
    queue = np.asarray(queue_rows) if len(queue_rows) else z_t
    teacher = np.exp(_log_softmax(z_t @ queue.T / TAU_T))
    w, b = loss_fn.projector.weight.detach().numpy(), loss_fn.projector.bias.detach().numpy()
    z_s = _unit(target.numpy() @ w.T + b)
    return float(np.mean(-(teacher * _log_softmax(z_s @ queue.T / TAU_S)).sum(axis=1)))


class _Fifo:
    """A queue written one row at a time, in plain python: slot ``pointer`` is overwritten next."""

    def __init__(self, size):
        self.slots, self.pointer, self.count = [None] * size, 0, 0

    def push(self, rows):
        for row in rows:
            self.slots[self.pointer] = row
            self.pointer = (self.pointer + 1) % len(self.slots)
            self.count = min(self.count + 1, len(self.slots))

    def rows(self):
        return self.slots[: self.count]


def test_first_step_uses_the_batch_as_queue():
    """Catches an empty (all-zero) queue being used at the first step: uniform labels, a constant loss."""
    loss_fn = _loss()
    target, source = _batch(3, seed=1)
    assert loss_fn(target, source).item() == pytest.approx(_reference(loss_fn, target, source, []), rel=1e-12)


@pytest.mark.parametrize("sizes", [[3, 3, 3, 2], [2, 7, 1, 4]], ids=["wrap-around", "batch-larger-than-queue"])
def test_values_and_queue_follow_a_one_row_at_a_time_fifo(sizes):
    """Catches a queue that is not FIFO (wrong pointer, wrap-around, count, oversize batch) or a wrong loss."""
    loss_fn, fifo = _loss(queue_size=5), _Fifo(5)
    for step, n in enumerate(sizes):
        target, source = _batch(n, seed=10 + step)
        expected = _reference(loss_fn, target, source, fifo.rows())  # the queue before this batch
        assert loss_fn(target, source).item() == pytest.approx(expected, rel=1e-12)
        fifo.push(list(_unit(source.numpy())))
        assert (loss_fn.queue_pointer.item(), loss_fn.queue_count.item()) == (fifo.pointer, fifo.count)
        np.testing.assert_allclose(loss_fn.queue[: fifo.count].numpy(), np.asarray(fifo.rows()), rtol=1e-12)


def test_batch_is_compared_with_the_queue_before_it_is_enqueued():
    """Catches enqueueing first, which makes each image its own (trivially matched) pseudo-class."""
    loss_fn = _loss(queue_size=8)
    first, second = _batch(3, seed=1), _batch(3, seed=2)
    loss_fn(*first)
    value = loss_fn(*second).item()
    before = _unit(first[1].numpy())
    after = np.concatenate([before, _unit(second[1].numpy())])
    assert value == pytest.approx(_reference(loss_fn, *second, list(before)), rel=1e-12)
    assert value != pytest.approx(_reference(loss_fn, *second, list(after)), rel=1e-3)


def test_eval_mode_does_not_enqueue():
    """Catches validation or evaluation passes writing into the queue (train/eval would change the run)."""
    loss_fn = _loss(queue_size=5)
    loss_fn(*_batch(2, seed=1))
    state = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    loss_fn.eval()
    loss_fn(*_batch(2, seed=2))
    for key, value in loss_fn.state_dict().items():
        assert torch.equal(value, state[key]), key
    loss_fn.train()
    loss_fn(*_batch(2, seed=3))
    assert (loss_fn.queue_pointer.item(), loss_fn.queue_count.item()) == (4, 4)


def test_state_dict_round_trip_continues_identically():
    """Catches a queue, pointer or count that a checkpoint does not carry: a resume would start a new queue."""
    loss_fn = _loss(queue_size=5, seed=0)
    for step in range(3):  # 6 rows into 5 slots: wrapped, pointer 1
        loss_fn(*_batch(2, seed=step))
    assert {"queue", "queue_pointer", "queue_count"} <= set(loss_fn.state_dict())
    buffer = io.BytesIO()
    torch.save(loss_fn.state_dict(), buffer)
    fresh = _loss(queue_size=5, seed=99)  # another projector and an empty queue, until loaded
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    for step in range(3, 6):
        batch = _batch(2, seed=step)
        assert fresh(*batch).item() == loss_fn(*batch).item()
    assert torch.equal(fresh.queue, loss_fn.queue) and fresh.queue_pointer.item() == loss_fn.queue_pointer.item()


def test_gradients_reach_projector_and_target_not_source_or_queue():
    """Catches a source that is not detached, a queue in the graph, or an in-place enqueue breaking backward."""
    loss_fn = _loss(queue_size=4, dtype=torch.float32)
    loss_fn(*_batch(3, seed=1, dtype=torch.float32))  # a filled queue, written again by the next step
    target, source = _batch(3, seed=2, dtype=torch.float32)
    target.requires_grad_(True)
    source.requires_grad_(True)
    loss_fn.compute(TransferInputs(target, source)).backward()  # backward after this step's enqueue
    assert {name for name, _ in loss_fn.named_parameters()} == {"projector.weight", "projector.bias"}
    assert loss_fn.projector.weight.grad.abs().sum() > 0 and target.grad.abs().sum() > 0
    assert source.grad is None and not loss_fn.queue.requires_grad


def test_bf16_inputs_are_computed_and_queued_in_float32():
    """Catches bf16 inputs failing against the float32 projector or turning the queue into bf16."""
    loss_fn = _loss(queue_size=4, dtype=torch.float32)
    target, source = (x.to(torch.bfloat16) for x in _batch(3, seed=1, dtype=torch.float32))
    assert loss_fn(target, source).dtype == torch.float32
    assert loss_fn.queue.dtype == torch.float32 and loss_fn.queue_count.item() == 3


def test_use_before_setup_and_bad_shapes_are_clear_errors():
    """Catches an opaque error from an empty queue or a missing projector instead of naming setup."""
    target, source = _batch(3, seed=1, dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"QueueDistillLoss\.setup"):
        QueueDistillLoss()(target, source)
    loss_fn = _loss(dtype=torch.float32)
    with pytest.raises(ValueError, match="same N"):
        loss_fn(target, source[:2])
    with pytest.raises(ValueError, match="set up for target × source dimensions 4 × 6, got 4 × 5"):
        loss_fn(target, source[:, :5])


@pytest.mark.parametrize(
    "params,message",
    [
        ({"queue_size": 0}, "queue_size must be >= 1, got 0"),
        ({"teacher_temperature": 0.0}, "teacher_temperature must be > 0, got 0.0"),
        ({"student_temperature": -0.1}, "student_temperature must be > 0, got -0.1"),
    ],
)
def test_bad_parameters_name_the_parameter(params, message):
    """Catches a zero queue or temperature accepted until it divides by zero in the first step."""
    with pytest.raises(ValueError, match=message):
        build_transfer_loss("queue_distill", params)


def test_found_by_name_with_checked_parameters():
    """Catches a loss that is not registered or whose parameters are not checked against the signature."""
    loss_fn = build_transfer_loss("queue_distill", {"queue_size": 64, "teacher_temperature": 0.04})
    assert isinstance(loss_fn, QueueDistillLoss)
    assert (loss_fn.queue_size, loss_fn.teacher_temperature, loss_fn.student_temperature) == (64, 0.04, 0.1)
    assert {"proj_cosine", "proj_mse", "queue_distill"} <= set(TRANSFER_LOSSES.declared_names())
    with pytest.raises(ConfigError, match="unexpected keyword argument 'temperature'"):
        build_transfer_loss("queue_distill", {"temperature": 0.1})


@pytest.mark.parametrize("name,params", [("queue_distill", {"queue_size": 64}), ("proj_cosine", {}), ("proj_mse", {"normalize": False})])
def test_a_transfer_config_accepts_the_new_losses(name, params):
    """Catches a loss the configuration rejects (unregistered name, or parameters that fail its check)."""
    raw = {"method": "transfer", "transfer": {"source_embeddings": "x.npz", "loss": {"name": name, "params": params}}}
    config = build_config(raw)
    assert (config.section(TransferConfig).loss.name, config.section(TransferConfig).loss.params) == (name, params)
    raw["transfer"]["loss"]["params"] = {"queue_size": "big"} if name == "queue_distill" else {"normalize": "no"}
    with pytest.raises(ConfigError, match=r"transfer\.loss\.params\.(queue_size|normalize)"):
        build_config(raw)
