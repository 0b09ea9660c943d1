"""The Trainer's parts: callbacks see every hook in order, one step is the step ``train`` takes, and the
checkpoint state round-trips."""

import io
import json
import time
import types

import pytest
import torch

from metrictransfer.config import build_config
from metrictransfer.engine import trainer
from metrictransfer.engine.callbacks import DATA_BOUND_SHARE, Callback, DataWaitHint, data_wait_hint, epoch_line, final_test_lines
from metrictransfer.methods.source import SourceMethod
from tests.helpers import STEPS_PER_EPOCH, tiny

TINY = tiny("name", "checkpoint", optim={"lr": 1e-3, "epochs": 2}, deterministic=True, method="source")


def _config(**changes):
    raw = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return build_config(raw)


class Recorder(Callback):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_fit_start(self, t):
        self.calls.append(("fit_start",))

    def on_epoch_start(self, t, epoch):
        self.calls.append(("epoch_start", epoch, t.done))

    def on_step_end(self, t, step, logs):
        self.calls.append(("step_end", step, t.epoch, t.done, "loss" in logs))

    def on_epoch_end(self, t, epoch, row):
        self.calls.append(("epoch_end", epoch, row["epoch"], row["step"], t.history[-1] is row))

    def on_fit_end(self, t, results):
        self.calls.append(("fit_end", len(results["history"])))


@pytest.mark.slow
def test_a_callback_sees_every_hook_in_order_with_epoch_and_step(tmp_path):
    recorder = Recorder()
    run = trainer.Trainer(_config(), tmp_path, progress=False, callbacks=[recorder])
    run.setup()
    run.fit()
    expected = [("fit_start",)]
    for epoch in range(2):
        expected.append(("epoch_start", epoch, 0))
        for done in range(1, STEPS_PER_EPOCH + 1):
            expected.append(("step_end", epoch * STEPS_PER_EPOCH + done, epoch, done, True))
        expected.append(("epoch_end", epoch, epoch + 1, (epoch + 1) * STEPS_PER_EPOCH, True))
    expected.append(("fit_end", 2))
    assert recorder.calls == expected
    assert list(tmp_path.iterdir()) == []  # the files are the default callbacks' work: none here


def _first_step_of_train(config, out, monkeypatch) -> tuple[float, dict]:
    """The loss and weights after ``train``'s first step (the run is stopped there)."""
    seen = {}

    class Spy(SourceMethod):
        def training_loss(self, images, labels, indices=None):
            loss, logs = super().training_loss(images, labels, indices)
            seen.setdefault("loss", logs["loss"])
            return loss, logs

    class Stop(Exception):
        pass

    real_step = trainer.Updater.step

    def step_once(self):
        real_step(self)
        seen["weights"] = {k: v.detach().clone() for k, v in self.method.model.state_dict().items()}
        raise Stop

    monkeypatch.setitem(trainer.METHODS, "source", Spy)
    monkeypatch.setattr(trainer.Updater, "step", step_once)
    with pytest.raises(Stop):
        trainer.train(config, out, progress=False)
    monkeypatch.undo()
    return seen["loss"], seen["weights"]


@pytest.mark.slow
def test_one_step_equals_the_first_step_of_train(tmp_path, monkeypatch):
    config = _config()
    loss, weights = _first_step_of_train(config, tmp_path / "run", monkeypatch)

    run = trainer.Trainer(config, progress=False, callbacks=[])
    run.setup()
    run.start_epoch()
    logs = run.step(next(iter(run.loader)))
    assert logs["loss"] == loss
    after = run.method.model.state_dict()
    assert weights.keys() == after.keys()
    for key, value in weights.items():
        assert torch.equal(after[key], value), key
    assert run.updater.iteration == 1 and run.done == 1


def _assert_same(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.slow
def test_state_dict_round_trips_through_load_state_dict():
    config = _config(
        mutual={"members": 2, "update_every": [1, 3]},
        method="mutual",
        model={"backbone": "resnet10t", "embedding_dim": 16, "normalize": True},
    )
    first = trainer.Trainer(config, progress=False, callbacks=[])
    first.setup()
    first.start_epoch()
    batches = iter(first.loader)
    for _ in range(4):  # member 1 (τ = 3) holds a gradient not yet applied
        first.step(next(batches))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    second = trainer.Trainer(config, progress=False, callbacks=[])
    second.setup()
    second.load_state_dict(state)
    assert (second.epoch, second.done) == (0, 4) and second.totals == first.totals
    _assert_same(first.state_dict(), second.state_dict())

    batch, streams = next(batches), trainer._rng_state()  # both continue identically
    first.step(batch)
    trainer._set_rng_state(streams)
    second.step(batch)
    _assert_same(first.state_dict()["models"], second.state_dict()["models"])


class _SlowLoader:
    """The trainer's loader, each batch handed over ``delay`` seconds late."""

    def __init__(self, loader, delay: float) -> None:
        self.loader, self.delay = loader, delay

    def __iter__(self):
        for batch in self.loader:
            time.sleep(self.delay)
            yield batch


@pytest.mark.slow
def test_the_epoch_row_holds_the_time_spent_waiting_for_batches(tmp_path, capsys):
    """A bug that counted the steps as waiting, or no waiting at all, fails the bounds: the wait is at least
    the loader's sleeps and at most the epoch."""
    delay = 0.02
    run = trainer.Trainer(_config(optim={"epochs": 2}), progress=False, callbacks=[DataWaitHint()])
    run.setup()
    run.loader = _SlowLoader(run.loader, delay)
    run.fit()
    for row in run.history:
        waited = row["data_wait"] * row["train_seconds"]
        assert STEPS_PER_EPOCH * delay * 0.99 <= waited <= row["train_seconds"]
        assert "data wait" in epoch_line(run.config, row)
    said = [line for line in capsys.readouterr().out.splitlines() if "data-bound" in line]
    if run.history[1]["data_wait"] >= DATA_BOUND_SHARE:  # the second epoch is judged, once
        assert len(said) == 1 and "epoch 2" in said[0] and "data.num_workers (now 0" in said[0]
    else:
        assert said == []


def test_the_data_bound_hint_is_said_once_and_never_for_a_first_epoch_that_is_not_the_last(capsys):
    hint = DataWaitHint()
    run = types.SimpleNamespace(config=_config(optim={"epochs": 3}))
    for epoch, wait in enumerate([0.9, 0.5, 0.6]):
        hint.on_epoch_start(run, epoch)
        hint.on_epoch_end(run, epoch, {"epoch": epoch + 1, "data_wait": wait})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "50% of epoch 2" in lines[0] and "data.cache" not in lines[0]  # glyphs: in memory already
    photos = types.SimpleNamespace(config=_config(data={"dataset": "folder", "root": "photos"}))
    assert "or set data.cache: memory" in data_wait_hint(photos.config, {"epoch": 2, "data_wait": 0.5}, cores=8)
    quiet = DataWaitHint()
    for epoch, wait in enumerate([0.1, 0.19, 0.05]):
        quiet.on_epoch_start(run, epoch)
        quiet.on_epoch_end(run, epoch, {"epoch": epoch + 1, "data_wait": wait})
    one_epoch = types.SimpleNamespace(config=_config(optim={"epochs": 1}))
    quiet.on_epoch_start(one_epoch, 0)
    assert capsys.readouterr().out == ""
    alone = DataWaitHint()
    alone.on_epoch_start(one_epoch, 0)
    alone.on_epoch_end(one_epoch, 0, {"epoch": 1, "data_wait": 0.3})
    assert "30% of epoch 1" in capsys.readouterr().out


def test_epoch_and_test_lines_print_metrics_in_percent_as_reports_do():
    # Bug caught: epoch lines printed fractions (recall@1 0.8731) where reports and table print percent (87.3).
    config = _config(name="tiny")
    row = {"epoch": 3, "loss": 0.25, "recall@1": 0.8731, "map@r": 0.5, "train_seconds": 2.0, "data_wait": 0.1}
    assert epoch_line(config, row) == "[tiny] epoch 3/2  loss 0.2500  recall@1 87.3%  map@r 50.0%  2.0s (data wait 10%)"
    assert epoch_line(config, {"epoch": 1, "loss": 0.5, "train_seconds": 1.0}) == "[tiny] epoch 1/2  loss 0.5000  1.0s"
    results = {"final": {"recall@1": 0.5}, "best": {"metric": "recall@1", "epoch": 1, "test": {"recall@1": 0.625}}}
    assert final_test_lines(config, results) == [
        "[tiny] test split, final model (epoch 2):  recall@1 50.0%",
        "[tiny] test split, best by validation recall@1, epoch 1:  recall@1 62.5%",
    ]
