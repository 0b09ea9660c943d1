"""Nothing trained is lost: checkpoints mid-epoch and on signals, exact resume after SIGKILL, safe loading,
non-finite losses, reduced precision."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from metrictransfer import __version__
from metrictransfer.cli import main
from metrictransfer.config import ConfigError, build_config
from metrictransfer.engine import trainer
from metrictransfer.methods.source import SourceMethod
from metrictransfer.runtime.checkpoint import atomic_save, load_checkpoint, run_checkpoints
from tests.helpers import STEPS_PER_EPOCH, tiny

pytestmark = pytest.mark.slow

TINY = tiny("name", "checkpoint", optim={"lr": 1e-3, "epochs": 2}, deterministic=True)


def _raw(**changes) -> dict:
    raw = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


def _weights(run: Path) -> dict:
    return load_checkpoint(run)["models"]["model"]


def _assert_same_weights(a: dict, b: dict) -> None:
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=1e-6, msg=key)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("whole")
    results = trainer.train(build_config(_raw()), out, progress=False)
    return out, results


def _start_run(recipe: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "metrictransfer.cli", "train", str(recipe), "--out", str(out), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {path} appeared:\n{process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights_and_metrics(uninterrupted, tmp_path):
    whole, whole_results = uninterrupted
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_raw(checkpoint={"every_steps": 3, "keep": 10})))
    out = tmp_path / "killed"
    process = _start_run(recipe, out)
    _wait_for(out / "checkpoints" / "step-000000006.pt", process)  # two saves into epoch 1
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    position = load_checkpoint(out)["position"]
    assert position["epoch"] == 0 and 0 < position["batches_done"] < STEPS_PER_EPOCH, position

    assert main(["train", "--resume", str(out)]) == 0
    _assert_same_weights(_weights(whole), _weights(out))
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["final"] == whole_results["final"]
    assert [r["loss"] for r in resumed["history"]] == pytest.approx([r["loss"] for r in whole_results["history"]], rel=1e-6)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_sigint_and_sigterm_save_a_checkpoint_before_exiting(uninterrupted, tmp_path, sig):
    whole, _ = uninterrupted
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_raw(checkpoint={"every_steps": 4, "keep": 3})))
    out = tmp_path / "stopped"
    process = _start_run(recipe, out)
    _wait_for(out / "checkpoints" / "step-000000004.pt", process)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + sig, stderr
    assert f"--resume {out}" in stderr
    state = load_checkpoint(out)
    assert state["step"] > 4 and state["position"]["batches_done"] == state["step"] % STEPS_PER_EPOCH
    assert main(["train", "--resume", str(out)]) == 0
    _assert_same_weights(_weights(whole), _weights(out))


def test_only_the_newest_checkpoints_are_kept_and_a_damaged_newest_falls_back(tmp_path, capsys):
    out = tmp_path / "run"
    config = build_config(_raw(checkpoint={"every_steps": 5, "keep": 3}, optim={"epochs": 1}))
    trainer.train(config, out, progress=False)
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-000000015.pt", "step-000000020.pt", "step-000000022.pt"]
    assert load_checkpoint(out)["step"] == 22
    assert run_checkpoints(out)[1].name == "step-000000022.pt"

    (out / "checkpoint.pt").unlink()
    (out / "checkpoints" / "step-000000022.pt").write_bytes(b"truncated")
    state = trainer._resumable_state(out, config)  # what Trainer.resume loads
    assert state is not None and state["position"]["batches_done"] == 20
    assert "step-000000022.pt" in capsys.readouterr().err


def test_a_checkpoint_never_runs_code_while_loading(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    atomic_save({"format": 2, "models": {}, "payload": Payload()}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


def test_resuming_with_another_configuration_or_version_is_refused_by_name(tmp_path):
    out = tmp_path / "run"
    trainer.train(build_config(_raw(optim={"epochs": 1})), out, progress=False)
    with pytest.raises(ValueError, match=r"optim\.lr: 0\.001 → 0\.002"):
        trainer.train(build_config(_raw(optim={"epochs": 1, "lr": 2e-3})), out, resume=True, progress=False)
    # how it runs may change: threads, workers, checkpointing
    trainer.train(build_config(_raw(optim={"epochs": 1}, threads=2, checkpoint={"keep": 2})), out, resume=True, progress=False)

    state = load_checkpoint(out)
    state["version"] = "0.0.1"
    atomic_save(state, out / "checkpoint.pt")
    with pytest.raises(ValueError, match=f"written by metrictransfer 0.0.1, this is {__version__}"):
        trainer.train(build_config(_raw(optim={"epochs": 2})), out, resume=True, progress=False)


class _NaNAtStep(SourceMethod):
    calls = 0

    def training_loss(self, images, labels, indices=None):
        loss, logs = super().training_loss(images, labels, indices)
        type(self).calls += 1
        if type(self).calls == STEPS_PER_EPOCH + 3:  # step 3 of epoch 2
            loss = loss * float("nan")
            logs["loss"] = float("nan")
        return loss, logs


def test_a_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setitem(trainer.METHODS, "source", _NaNAtStep)
    _NaNAtStep.calls = 0
    out = tmp_path / "run"
    with pytest.raises(FloatingPointError, match=r"step 25 \(epoch 2, batch 3\): loss nan.*--on-nan skip"):
        trainer.train(build_config(_raw()), out, progress=False)
    assert load_checkpoint(out)["epoch"] == 1


def test_on_nan_skip_skips_and_counts_the_step(tmp_path, monkeypatch, uninterrupted):
    monkeypatch.setitem(trainer.METHODS, "source", _NaNAtStep)
    _NaNAtStep.calls = 0
    results = trainer.train(build_config(_raw(optim={"on_nan": "skip"})), tmp_path / "run", progress=False)
    assert [row["skipped_steps"] for row in results["history"]] == [0, 1]
    assert all(row["loss"] == row["loss"] for row in results["history"])  # not NaN: skipped steps are not averaged in
    whole = uninterrupted[1]["history"]
    assert results["history"][0]["loss"] == pytest.approx(whole[0]["loss"], rel=1e-6)  # identical until the NaN


def test_the_cli_flag_sets_on_nan(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_raw(optim={"epochs": 1})))
    assert main(["train", str(recipe), "--out", str(tmp_path / "run"), "--on-nan", "skip"]) == 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["optim"]["on_nan"] == "skip"


def test_bf16_trains_on_the_cpu_and_the_losses_see_float32(tmp_path, monkeypatch):
    seen = []
    real = SourceMethod.training_loss

    def spy(self, images, labels, indices=None):
        seen.append(self.model(images[:2]).dtype)
        return real(self, images, labels, indices)

    monkeypatch.setattr(SourceMethod, "training_loss", spy)
    results = trainer.train(build_config(_raw(optim={"epochs": 1}, precision="bf16")), tmp_path / "run", progress=False)
    assert set(seen) == {torch.float32}
    assert 0 < results["final"]["recall@1"] <= 1
    assert load_checkpoint(tmp_path / "run")["config"]["precision"] == "bf16"


def test_float16_on_the_cpu_is_refused_with_the_alternative(tmp_path):
    with pytest.raises(ConfigError, match="precision: bf16"):
        trainer.train(build_config(_raw(precision=16, device="cpu")), tmp_path / "run", progress=False)


def test_channels_last_gives_the_same_gradients_and_trains(tmp_path):
    config = build_config(_raw(channels_last=True))
    torch.manual_seed(0)
    plain = SourceMethod(config, 4)
    fast = SourceMethod(config, 4)
    fast.load_state_dict(plain.state_dict())
    trainer.configure_models(fast, config, torch.device("cpu"))
    assert fast.model.backbone.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(4).repeat_interleave(2)
    for method, x in ((plain, images), (fast, images.contiguous(memory_format=torch.channels_last))):
        method.training_loss(x, labels)[0].backward()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):  # float32 rounding of other kernels
        assert (q.grad - p.grad).abs().max() <= 5e-5 * p.grad.abs().max(), name
    results = trainer.train(build_config(_raw(channels_last=True, optim={"epochs": 1})), tmp_path / "run", progress=False)
    assert 0 < results["final"]["recall@1"] <= 1


def test_compile_runs_the_models_through_torch_compile(tmp_path, monkeypatch):
    """The eager backend: the same graph capture as the default one without a C++ build (minutes on a CPU)."""
    from metrictransfer.models import EmbeddingModel

    real = EmbeddingModel.compile
    monkeypatch.setattr(EmbeddingModel, "compile", lambda self, **kw: real(self, backend="eager"))
    config = build_config(_raw(compile=True, optim={"epochs": 1}))
    torch.manual_seed(0)
    method = SourceMethod(config, 4)
    trainer.configure_models(method, config, torch.device("cpu"))
    assert method.model._compiled_call_impl is not None
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(4).repeat_interleave(2)
    plain = SourceMethod(config, 4)
    plain.load_state_dict(method.state_dict())
    assert method.training_loss(images, labels)[0].item() == pytest.approx(plain.training_loss(images, labels)[0].item(), rel=1e-5)
    results = trainer.train(config, tmp_path / "run", progress=False)
    assert 0 < results["final"]["recall@1"] <= 1


def test_the_gradient_scaler_path_updates_like_plain_float32():
    """float16 runs only on GPUs; the updater's scaler path (scale, unscale before clipping, step, update,
    state in the checkpoint) is checked here with the CPU scaler on float32."""
    config = build_config(_raw(optim={"grad_clip": 1.0, "optimizer": "sgd", "lr": 0.1}))  # SGD: a missing unscale would show
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(4).repeat_interleave(2)
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0**12)):
        torch.manual_seed(0)
        method = SourceMethod(config, 4)
        updater = trainer.Updater(method, config.optim, STEPS_PER_EPOCH, scaler)
        for _ in range(2):
            updater.backward(method.training_loss(images, labels)[0])
            updater.step()
        results.append((method.state_dict(), updater.state_dict()))
    (plain, _), (scaled, state) = results
    for key, value in plain.items():
        torch.testing.assert_close(scaled[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert state["grad_scaler"]["scale"] == 2.0**12 and state["updates"] == {"model": 2}
