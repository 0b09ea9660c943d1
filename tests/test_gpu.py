"""The GPU paths, on a CUDA device: evaluation equals the CPU's, bf16 and float16 (gradient scaler) steps,
channels-last, torch.compile with inductor, a 1-process torchrun run that resumes, checkpoints that move
between GPU and CPU and continue where they stopped, export of a CUDA-trained model.

Run with ``pytest -m gpu`` (or ``make gpu-check``); without CUDA every test here is skipped.
``METRICTRANSFER_TEST_DEVICE=cpu pytest -m gpu tests/test_gpu.py`` runs them against the CPU instead,
to check the tests' own code on a machine without a GPU (float16 and inductor are then skipped).
With ``METRICTRANSFER_GPU_MEASURED=FILE`` every measured difference is appended to FILE (JSON lines),
so a GPU session sees how far inside its tolerance each one is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from metrictransfer.config import build_config
from metrictransfer.engine import trainer
from metrictransfer.evaluation import retrieval_metrics
from metrictransfer.methods.source import SourceMethod
from metrictransfer.model_export import FORMATS, export_model
from metrictransfer.runtime import distributed
from metrictransfer.runtime.checkpoint import load_checkpoint, load_embedding_model
from tests.helpers import STEPS_PER_EPOCH, tiny

DEVICE = torch.device(os.environ.get("METRICTRANSFER_TEST_DEVICE", "cuda"))
ON_CUDA = DEVICE.type == "cuda"
pytestmark = [
    pytest.mark.slow,  # trains
    pytest.mark.gpu,
    pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(), reason="needs a CUDA device"),
]
needs_cuda = pytest.mark.skipif(not ON_CUDA, reason="CUDA only (float16 autocast, inductor)")

TINY = tiny("name", "checkpoint")
# The resume runs: 2 epochs of SGD (an update proportional to the gradient, so CPU and CUDA rounding
# stays small; Adam's first steps are ±lr whatever the gradient's size), both epoch ends kept.
RESUMED = {**TINY, "optim": {"optimizer": "sgd", "lr": 0.01, "epochs": 2}, "checkpoint": {"keep": 2}, "deterministic": True}


def _raw(**changes) -> dict:
    raw = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return raw


@pytest.fixture(autouse=True)
def _global_torch_state():
    """In-process runs with ``deterministic: true`` switch deterministic algorithms on for the whole
    process; the tests here start without, and leave those switches as they found them."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32)
    torch.use_deterministic_algorithms(False)
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = saved[1], saved[2]


@pytest.fixture
def measure(request):
    """Record a measured difference (for the GPU session's report; see the module docstring)."""

    def record(name: str, value: float, limit: float | None = None) -> None:
        path = os.environ.get("METRICTRANSFER_GPU_MEASURED")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"test": request.node.name, "name": name, "value": value, "limit": limit}) + "\n")

    return record


def _batch(n_classes: int = 4, per_class: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(n_classes * per_class, 3, size, size, generator=generator)
    return images.to(DEVICE), torch.arange(n_classes).repeat_interleave(per_class).to(DEVICE)


def _methods(config, copies: int = 2) -> list[SourceMethod]:
    """``copies`` source methods with the same initial weights, on DEVICE, in training mode."""
    torch.manual_seed(0)
    first = SourceMethod(config, 4)
    methods = [first]
    for _ in range(copies - 1):
        other = SourceMethod(config, 4)
        other.load_state_dict(first.state_dict())
        methods.append(other)
    return [m.to(DEVICE).train() for m in methods]


def _flat_grads(method) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in method.parameters() if p.grad is not None]).float()


# ------------------------------------------------------------------------------------------ evaluation


def _clustered(n: int = 3000, dim: int = 32, classes: int = 400, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, classes, (n,), generator=generator)
    centers = torch.randn(classes, dim, generator=generator)
    return (centers[labels] + 1.2 * torch.randn(n, dim, generator=generator)).to(dtype), labels


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("block_size", [None, 256])  # None: the device's default (8,192 rows on CUDA, 1,024 on the CPU)
def test_evaluation_on_the_device_equals_the_cpu(block_size, dtype, metric, measure):
    x, labels = _clustered(dtype=dtype)
    ks = (1, 2, 4, 8, 32)
    query = torch.arange(len(x)) % 3 == 0
    cases = {"all-vs-all": {}, "query-vs-gallery": {"is_query": query, "is_gallery": ~query}}
    # float64: the same order of distances everywhere; float32: GPU and CPU products round differently,
    # which may swap a near-tie or two (each moves a recall by 1/N)
    tolerance = 1e-12 if dtype == torch.float64 else 3 / len(x)
    for name, masks in cases.items():
        cpu = retrieval_metrics(x, labels, ks, metric, block_size=block_size, **masks)
        for labels_on in (torch.device("cpu"), DEVICE):  # the CLI keeps labels on the CPU; both must work
            device = retrieval_metrics(x.to(DEVICE), labels.to(labels_on), ks, metric, block_size=block_size, **masks)
            assert device.keys() == cpu.keys()
            difference = max(abs(device[k] - cpu[k]) for k in cpu)
            measure(f"{name} max metric difference", difference, tolerance)
            assert difference <= tolerance, (name, labels_on, device, cpu)


def test_views_kept_on_the_device_embed_as_a_fresh_decode_on_the_cpu(measure, capsys):
    """The test split kept as uint8 on the device, converted and normalised there, embeds as views decoded and
    normalised on the CPU every time (the same model on the device)."""
    from torchvision.datasets import FakeData

    from metrictransfer.data.multiview import MultiViewDataset
    from metrictransfer.data.transforms import build_transform
    from metrictransfer.evaluation.embed import extract_embeddings
    from metrictransfer.evaluation.kept_views import keep_views

    images = FakeData(size=40, image_size=(3, 50, 70), num_classes=5, random_offset=3)
    test = build_transform("paper", False, 32)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    model = model.to(DEVICE)
    fresh = extract_embeddings(model, MultiViewDataset(images, test), batch_size=16, device=DEVICE)[0]  # normalised on the CPU
    kept = keep_views(MultiViewDataset(images, test), 1.0, say=print, name="test")
    for _ in range(2):
        on_device = extract_embeddings(model, kept, batch_size=16, device=DEVICE)[0]
        difference = float((on_device - fresh).abs().max())
        measure("kept views: max embedding difference", difference, 1e-5)
        assert difference <= 1e-5
    where = "on cuda" if ON_CUDA else "in host memory"
    assert f"test views kept {where}" in capsys.readouterr().out


def test_training_views_finished_on_the_device_equal_the_cpu_finished_ones(measure):
    """The loader's uint8 views, converted and normalised on the device by prepare_batch, equal the CPU's."""
    config = build_config(_raw(data={"views": 2}))
    finished = {}
    for device in ("cpu", str(DEVICE)):
        run = trainer.Trainer(config, progress=False, callbacks=[], device_name=device)
        run.setup()
        run.start_epoch()
        batch = next(iter(run.loader))
        assert batch[0].dtype == torch.uint8  # the workers send uint8
        finished[device] = run.prepare_batch(batch)[0].cpu()
    difference = float((finished[str(DEVICE)] - finished["cpu"]).abs().max())
    measure("training views: max difference, device against CPU", difference, 1e-6)
    assert difference <= 1e-6


# ------------------------------------------------------------------------------------ reduced precision


PRECISION_LIMITS = {  # measured on the CPU with the same model: bf16 cos 0.977, rel 0.21; float16 cos 0.998, rel 0.06
    "bf16": {"loss": 0.05, "cosine": 0.95, "relative": 0.4},
    "16": {"loss": 0.01, "cosine": 0.99, "relative": 0.15},
}


@pytest.mark.parametrize("precision", ["bf16", pytest.param("16", marks=needs_cuda)])
def test_a_reduced_precision_step_is_finite_and_close_to_float32(precision, measure):
    """One step's loss and gradient against float32's; float16 through the trainer's gradient scaler,
    which skips steps with overflowing gradients and halves its scale until they fit."""
    plain, reduced = _methods(build_config(_raw()))
    config = build_config(_raw(precision=precision))
    trainer.configure_models(reduced, config, DEVICE)
    images, labels = _batch()
    loss32 = plain.training_loss(images, labels)[0]
    loss32.backward()
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=trainer.FLOAT16_INITIAL_SCALE, enabled=precision == "16")  # as the trainer's
    optimizer = torch.optim.SGD(reduced.parameters(), lr=0.0)  # only for the scaler's unscale and skip logic
    for attempt in range(40):  # noqa: B007  (read after the loop: how many steps the scaler skipped)
        optimizer.zero_grad(set_to_none=True)
        loss = reduced.training_loss(images, labels)[0]
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grads = _flat_grads(reduced)
        scaler.step(optimizer)
        scaler.update()
        if torch.isfinite(grads).all():
            break
    else:
        pytest.fail(f"{precision}: gradients never finite (scale now {scaler.get_scale()})")
    reference = _flat_grads(plain)
    limits = PRECISION_LIMITS[precision]
    loss_error = abs(loss.item() - loss32.item()) / abs(loss32.item())
    cosine = F.cosine_similarity(grads, reference, dim=0).item()
    relative = ((grads - reference).norm() / reference.norm()).item()
    measure("loss relative error", loss_error, limits["loss"])
    measure("gradient cosine", cosine, limits["cosine"])
    measure("gradient relative error", relative, limits["relative"])
    measure("scaler skips before finite gradients", attempt)
    assert loss_error <= limits["loss"] and cosine >= limits["cosine"] and relative <= limits["relative"], (loss_error, cosine, relative)
    assert attempt == 0, f"the trainer's initial loss scale overflowed {attempt} times"  # each a step lost


@pytest.mark.parametrize("precision", ["bf16", pytest.param("16", marks=needs_cuda)])
def test_a_reduced_precision_run_trains_like_float32(precision, tmp_path, measure):
    plain = trainer.train(build_config(_raw(device=DEVICE.type)), tmp_path / "32", progress=False)
    reduced = trainer.train(build_config(_raw(precision=precision, device=DEVICE.type)), tmp_path / precision, progress=False)
    loss, loss32 = reduced["history"][0]["loss"], plain["history"][0]["loss"]
    measure("epoch loss relative difference", abs(loss - loss32) / loss32, 0.05)
    assert abs(loss - loss32) <= 0.05 * loss32
    assert 0 < reduced["final"]["recall@1"] <= 1
    state = load_checkpoint(tmp_path / precision)
    assert state["config"]["precision"] == precision
    if precision == "16":  # the scaler's state is checkpointed, so a resumed run keeps its scale
        assert state["grad_scaler"] is not None and state["grad_scaler"]["scale"] > 0


# --------------------------------------------------------------------------- memory format, compilation


def test_channels_last_gives_the_same_gradients_and_trains(tmp_path, measure):
    """TF32 off for the comparison: both layouts then run true float32 convolutions, and only the
    summation order of the kernels differs (TF32 would add its own, larger, rounding to both)."""
    torch.backends.cudnn.allow_tf32 = False
    config = build_config(_raw(channels_last=True))
    plain, fast = _methods(config)
    trainer.configure_models(fast, config, DEVICE)
    assert fast.model.backbone.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    images, labels = _batch()
    plain.training_loss(images, labels)[0].backward()
    fast.training_loss(images.contiguous(memory_format=torch.channels_last), labels)[0].backward()
    worst = 0.0
    for p, q in zip(plain.parameters(), fast.parameters()):
        if p.grad is not None and p.grad.abs().max() > 0:
            worst = max(worst, ((q.grad - p.grad).abs().max() / p.grad.abs().max()).item())
    measure("worst parameter gradient difference / its largest gradient", worst, 1e-4)
    assert worst <= 1e-4
    results = trainer.train(build_config(_raw(channels_last=True, device=DEVICE.type)), tmp_path / "run", progress=False)
    assert 0 < results["final"]["recall@1"] <= 1


@needs_cuda
def test_compile_with_inductor_gives_the_eager_embeddings_and_trains(tmp_path, measure):
    """``compile: true`` as the trainer applies it (inductor, the default backend on CUDA): the
    embeddings in evaluation and training mode, the loss and the gradients equal eager mode's."""
    torch.backends.cudnn.allow_tf32 = False
    config = build_config(_raw(compile=True))
    plain, compiled = _methods(config)
    trainer.configure_models(compiled, config, DEVICE)
    assert compiled.model._compiled_call_impl is not None
    images, labels = _batch()
    plain.eval()
    compiled.eval()
    with torch.no_grad():
        eager, fused = plain.model(images), compiled.model(images)
    plain.train()
    compiled.train()
    difference = ((fused - eager).abs().max() / eager.abs().max()).item()
    measure("eval embeddings max difference / max", difference, 1e-4)
    assert difference <= 1e-4
    loss, loss_compiled = plain.training_loss(images, labels)[0], compiled.training_loss(images, labels)[0]
    loss.backward()
    loss_compiled.backward()
    loss_error = abs(loss_compiled.item() - loss.item()) / abs(loss.item())
    grad_error = ((_flat_grads(compiled) - _flat_grads(plain)).norm() / _flat_grads(plain).norm()).item()
    measure("training loss relative difference", loss_error, 1e-4)
    measure("gradient relative difference", grad_error, 1e-3)
    assert loss_error <= 1e-4 and grad_error <= 1e-3
    started = time.perf_counter()
    results = trainer.train(build_config(_raw(compile=True, device="cuda")), tmp_path / "run", progress=False)
    measure("seconds of a compiled 1-epoch run (compilation included)", time.perf_counter() - started)
    assert 0 < results["final"]["recall@1"] <= 1


# ------------------------------------------------------------------------------ torchrun, SyncBatchNorm


def test_sync_batchnorm_conversion_keeps_checkpoint_names_and_gradients(monkeypatch, measure):
    """The trainer converts batch norm to SyncBatchNorm only with more than one process on GPUs
    (``configure_models``: ``world > 1``), so a 1-process torchrun run keeps plain BatchNorm. The
    conversion is checked here by telling ``configure_models`` there are two processes; outside a
    process group SyncBatchNorm computes plain batch norm, so the gradients must be the same."""
    torch.backends.cudnn.allow_tf32 = False
    config = build_config(_raw())
    plain, synced = _methods(config)
    monkeypatch.setattr(distributed, "current", lambda: distributed.Ranks(0, 2, 0))
    trainer.configure_models(synced, config, DEVICE)
    monkeypatch.undo()
    converted = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    if not ON_CUDA:  # the trainer converts on GPUs only (gloo has no SyncBatchNorm)
        assert converted == 0
        return
    assert converted == sum(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules()) > 0
    assert list(synced.state_dict()) == list(plain.state_dict())  # checkpoints load either way
    images, labels = _batch()
    plain.training_loss(images, labels)[0].backward()
    synced.training_loss(images, labels)[0].backward()
    difference = ((_flat_grads(synced) - _flat_grads(plain)).norm() / _flat_grads(plain).norm()).item()
    measure("gradient relative difference", difference, 1e-5)
    assert difference <= 1e-5


def _train_cli(*args: str, cuda: bool = True, torchrun: bool = False) -> subprocess.CompletedProcess:
    """``metrictransfer train`` in its own process (fresh CUDA and deterministic settings); ``cuda=False``
    hides every GPU from it, as on a machine without one."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if not cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""
    launcher = [sys.executable]
    if torchrun:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    done = subprocess.run([*launcher, "-m", "metrictransfer.cli", "train", *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _truncated_copy(run: Path, out: Path) -> Path:
    """A copy of a finished 2-epoch run as it was after its first epoch: only the epoch-1 checkpoint is
    left, so ``--resume`` continues from there (as after a stop at that point)."""
    shutil.copytree(run, out)
    (out / "checkpoint.pt").unlink()
    (out / "results.json").unlink()
    for file in (out / "checkpoints").glob("step-*.pt"):
        if int(file.stem.split("-")[1]) > STEPS_PER_EPOCH:
            file.unlink()
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{STEPS_PER_EPOCH:09d}.pt"]
    return out


def _recipe(tmp: Path, device: str) -> Path:
    recipe = tmp / f"resumed-{device}.yaml"
    recipe.write_text(yaml.safe_dump({**RESUMED, "device": device}))
    return recipe


@pytest.fixture(scope="module")
def device_run(tmp_path_factory) -> Path:
    """2 epochs straight on DEVICE, launched by torchrun with one process. ``model.sync_batchnorm`` is on
    (the default), but with one process ``distributed.setup`` joins no process group (no NCCL) and
    ``configure_models`` converts nothing: this is the single-GPU path under torchrun. NCCL and
    SyncBatchNorm across processes need two GPUs (tests/runtime/test_distributed.py checks the multi-process
    logic with gloo on CPUs)."""
    out = tmp_path_factory.mktemp("device") / "run"
    _train_cli(str(_recipe(out.parent, DEVICE.type)), "--out", str(out), torchrun=True)
    return out


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory) -> Path:
    """2 epochs straight on the CPU, in a process that sees no GPU."""
    out = tmp_path_factory.mktemp("cpu") / "run"
    _train_cli(str(_recipe(out.parent, "cpu")), "--out", str(out), cuda=False)
    return out


def _same_state(a, b) -> bool:
    """Equal random-generator states: tensors, lists of tensors (CUDA), tuples (Python), dicts (NumPy)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    return a == b


def _same_weights(a: dict, b: dict, atol: float) -> None:
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=atol, msg=key)


def test_a_one_process_torchrun_run_on_the_device_resumes_to_the_same_weights(device_run, tmp_path):
    state = load_checkpoint(device_run, map_location=None)  # tensors on the device they were saved from
    weights = state["models"]["model"]
    assert all(t.device.type == DEVICE.type for t in weights.values())
    if ON_CUDA:
        assert "cuda" in state["rng"]  # the CUDA random streams are checkpointed
    resumed = _truncated_copy(device_run, tmp_path / "resumed")
    _train_cli("--resume", str(resumed), torchrun=True)
    whole, again = load_checkpoint(device_run), load_checkpoint(resumed)
    assert again["step"] == whole["step"] == 2 * STEPS_PER_EPOCH
    _same_weights(whole["models"]["model"], again["models"]["model"], atol=1e-6)  # deterministic, one device
    assert again["rng"].keys() == whole["rng"].keys()
    for stream in whole["rng"]:  # every random stream continued from where it was saved
        assert _same_state(again["rng"][stream], whole["rng"][stream]), stream
    history, history_again = (json.loads((r / "results.json").read_text())["history"] for r in (device_run, resumed))
    assert [r["loss"] for r in history_again] == pytest.approx([r["loss"] for r in history], rel=1e-6)


@pytest.mark.parametrize("direction", ["device→cpu", "cpu→device"])
def test_a_checkpoint_resumes_on_the_other_device_and_continues_where_it_stopped(direction, device_run, cpu_run, tmp_path, measure):
    """The first epoch on A, the second resumed on B, against both epochs straight on A. CPU and CUDA
    kernels round differently (and TF32 convolutions on recent GPUs), so the weights are compared by
    how far apart they end relative to how far the second epoch moved them: a resume from the wrong
    batch, epoch or random state moves them by about as much as the epoch itself."""
    straight = device_run if direction == "device→cpu" else cpu_run
    to_cpu = direction == "device→cpu"
    resumed = _truncated_copy(straight, tmp_path / "resumed")
    _train_cli("--resume", str(resumed), "--set", f"device={'cpu' if to_cpu else DEVICE.type}", cuda=not to_cpu)
    whole, again = load_checkpoint(straight), load_checkpoint(resumed)
    half = load_checkpoint(straight / "checkpoints" / f"step-{STEPS_PER_EPOCH:09d}.pt")
    assert again["step"] == whole["step"] == 2 * STEPS_PER_EPOCH
    assert again["position"] == whole["position"] == {"epoch": 2, "batches_done": 0, "totals": {}}
    assert again["history"][0] == whole["history"][0]  # epoch 1 is the run's own, carried over
    for stream in ("python", "numpy"):  # device-independent streams continue exactly
        assert _same_state(again["rng"][stream], whole["rng"][stream]), stream
    keys = [k for k, v in whole["models"]["model"].items() if v.is_floating_point()]

    def flat(state: dict) -> torch.Tensor:
        return torch.cat([state["models"]["model"][k].flatten().double() for k in keys])

    moved = (flat(whole) - flat(half)).norm().item()
    apart = (flat(again) - flat(whole)).norm().item()
    measure("distance to the straight run / the second epoch's movement", apart / moved, 0.1)
    assert moved > 0 and apart <= 0.1 * moved, (apart, moved)
    loss, loss_again = whole["history"][1]["loss"], again["history"][1]["loss"]
    measure("epoch-2 loss relative difference", abs(loss_again - loss) / loss, 0.01)
    assert loss_again == pytest.approx(loss, rel=0.01)


# ------------------------------------------------------------------------------------------------ export


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_model_trained_on_the_device_exports_and_loads_back_there(fmt, device_run, tmp_path, measure):
    description = export_model(device_run, fmt, tmp_path / f"model.{fmt}")
    measure(f"{fmt} export max difference (checked on the CPU)", description["checked"]["max_abs_difference"], 1e-4)
    assert description["checked"]["max_abs_difference"] <= 1e-4
    torch.backends.cudnn.allow_tf32 = False
    on_device, _ = load_embedding_model(device_run, map_location=DEVICE)
    on_cpu, _ = load_embedding_model(device_run)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = on_device.eval()(images.to(DEVICE)).cpu(), on_cpu.eval()(images)
    difference = ((a - b).abs().max() / b.abs().max()).item()
    measure("embeddings on the device vs the CPU, max difference / max", difference, 1e-4)
    assert difference <= 1e-4
