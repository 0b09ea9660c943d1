"""The benchmarks' harness and shared helpers. Every benchmark runs from the repository root as
``.venv/bin/python -m benchmarks.NAME`` and ends the same way: :func:`parser` for its arguments, then
:func:`write_results` for its table and record (benchmarks/results/NAME.md and .json, with the environment
and the command that reruns it)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DRY_RESULTS = Path(tempfile.gettempdir()) / "metrictransfer-gpu-check-dry"  # the GPU scripts' --dry output


# ------------------------------------------------------------------------------------ harness


def parser(doc: str | None, name: str | None = None) -> argparse.ArgumentParser:
    """A benchmark's argument parser: its module docstring as the description; with ``name``, a ``--name``
    option (the stem of its files in benchmarks/results/, default ``name``)."""
    module = Path(sys.argv[0]).stem
    result = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{module}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if name is not None:
        result.add_argument("--name", default=name, help=f"results file stem under benchmarks/results/ (default: {name})")
    return result


def environment(device: Any = "cpu") -> dict[str, Any]:
    """Where a measurement was taken: device, CPU model and cores, Python, torch (and CUDA / cuDNN settings
    on a GPU), torch's threads and the native thread pools loaded (threadpoolctl, when installed)."""
    import platform

    import torch

    device = torch.device(device)
    cuda = device.type == "cuda"
    try:
        from threadpoolctl import threadpool_info

        pools = {pool["internal_api"]: pool["num_threads"] for pool in threadpool_info()}
    except ImportError:
        pools = {}
    return {
        "device": torch.cuda.get_device_name(device) if cuda else "CPU",
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,  # type: ignore[no-untyped-call]
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "tf32_conv": bool(torch.backends.cudnn.allow_tf32),
        "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
        "threads": torch.get_num_threads(),
        "thread_pools": pools,
    }


def environment_line(env: dict[str, Any]) -> str:
    """The environment as the one line every table ends with."""
    device = f"{env['device']} (CUDA {env['cuda']}); " if env.get("cuda") else ""
    pools = ", ".join(f"{api} {threads}" for api, threads in env.get("thread_pools", {}).items())
    return (
        f"Environment: {device}{env['cpu']}, {env['cpu_cores']} cores; Python {env['python']}, torch {env['torch']}, "
        f"{env['threads']} torch thread{'s' if env['threads'] != 1 else ''}" + (f" (thread pools: {pools})" if pools else "") + "."
    )


def write_results(
    name: str, lines: list[str], record: dict[str, Any], rerun: str, out: Path = RESULTS, env: dict[str, Any] | None = None
) -> Path:
    """Write ``out``/NAME.md (``lines``, then the environment line and "Rerun: `.venv/bin/python -m
    benchmarks.RERUN`") and ``out``/NAME.json (``record`` with the environment), each atomically, and
    print the table. ``rerun`` is the module and its arguments, e.g. ``"cli_startup --repeats 5"``."""
    from metrictransfer.io import atomic_write_text

    env = record.get("environment") or env or environment()
    text = "\n".join([*lines, "", environment_line(env), "", f"Rerun: `.venv/bin/python -m benchmarks.{rerun}`"]) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps({**record, "environment": env}, indent=2, default=str) + "\n", out / f"{name}.json")
    atomic_write_text(text, out / f"{name}.md")
    print(text + f"\nwrote {out / name}.md and .json", flush=True)
    return out / f"{name}.md"


def median_seconds(action, repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``action`` (medians: the machines are noisy)."""
    import time

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def mean_std(values: list[float]) -> str:
    """Fractions as percent: "mean ± std" over seeds, or the single value."""
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def train_once(raw: dict, out: Path, origin: str) -> dict:
    """Train one configuration into ``out`` unless it already finished there (its results.json exists);
    a run an interrupted benchmark left unfinished there is resumed."""
    from metrictransfer.config import build_config
    from metrictransfer.engine.run_folder import holds_run
    from metrictransfer.engine.trainer import train

    done = out / "results.json"
    if done.is_file():
        return json.loads(done.read_text())
    print(f"== {out}", flush=True)
    return train(build_config(raw, origin=f"{origin} {out}"), out, resume=holds_run(out), progress=False)


class Stepper:
    """A run's method, loader and updater as ``Trainer.setup`` builds them (on the CPU, no callbacks), for
    timed steps (benchmarks.cohort_step with data loading, benchmarks.step_overhead on a preloaded batch)."""

    def __init__(self, raw: dict, origin: str) -> None:
        from metrictransfer.config import build_config
        from metrictransfer.engine.trainer import Trainer

        self.trainer = Trainer(build_config(raw, origin=origin), device_name="cpu", progress=False, callbacks=[])
        self.trainer.setup()
        self.trainer.start_epoch()
        self.method, self.loader, self.updater = self.trainer.method, self.trainer.loader, self.trainer.updater
        self.batches = iter(self.loader)

    def _next(self) -> tuple:
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)

    def next_batch(self) -> tuple:
        """The loader's next batch as training flattens it: images, labels and indices per view."""
        return self.trainer.prepare_batch(self._next())

    def update(self, images, labels, indices) -> None:
        """One training step on the given batch: loss, finiteness check, backward, optimiser update."""
        self.trainer.update(images, labels, indices)

    def step(self) -> None:
        self.trainer.step(self._next())


# ------------------------------------------------------------------------------------ GPU benchmarks


def synchronize(device) -> None:
    """Wait for the device's queued work: CUDA runs asynchronously, so a timer read without it measures
    only how fast Python queued the kernels."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    """The processor's model name (timings differ between CPUs, so every table names its own)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed_steps(step, warmup: int, steps: int, device) -> tuple[float, float]:
    """(seconds of the first call, seconds per call over ``steps`` calls after ``warmup`` calls); the
    first call holds one-off costs (cuDNN algorithm choice, torch.compile), so it is reported apart."""
    import time

    synchronize(device)
    started = time.perf_counter()
    step()
    synchronize(device)
    first = time.perf_counter() - started
    for _ in range(max(0, warmup - 1)):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return first, (time.perf_counter() - started) / steps


class _ItemCount:
    """A stand-in training set for methods that only ask how many items and which labels it has (with the
    rest of a RetrievalDataset's attributes, which the trainer records of its training set)."""

    classes = split = dataset_name = is_query = is_gallery = root = None

    def __init__(self, labels) -> None:
        self.labels = labels
        self.item_names = [f"item {i}" for i in range(len(labels))]

    def __len__(self) -> int:
        return len(self.labels)


class DeviceStepper:
    """A run's method and updater on a device as ``Trainer.setup`` builds them (precision, channels-last,
    compile; ``check_run_options``), over a stand-in training set of ``train_size`` images, and one
    synthetic batch shaped as the trainer's loader gives it, prepared (flattened, laid out, on the device)
    once: :meth:`step` is ``Trainer.update``, one training step without data loading.

    ``compile_backend`` replaces torch.compile's default backend (inductor) — ``"eager"`` on the CPU,
    where inductor would first build C++ for minutes."""

    def __init__(
        self, raw: dict, device, num_classes: int, train_size: int, compile_backend: str | None = None, origin: str = "benchmark"
    ) -> None:
        import functools

        import numpy as np
        import torch

        from metrictransfer.config import build_config
        from metrictransfer.engine.trainer import Trainer
        from metrictransfer.models import EmbeddingModel

        config = build_config(raw, origin=origin)
        self.config, self.device = config, torch.device(device)
        self.trainer = Trainer(config, device_name=str(self.device), progress=False, callbacks=[])
        real_compile = EmbeddingModel.compile
        if compile_backend is not None:
            EmbeddingModel.compile = functools.partialmethod(real_compile, backend=compile_backend)
        try:  # e.g. float16 on a CPU is refused here, as in training
            self.trainer.setup(train_set=_ItemCount(np.arange(train_size) % num_classes))
        finally:
            EmbeddingModel.compile = real_compile
        self.trainer.start_epoch()
        self.method, self.updater = self.trainer.method, self.trainer.updater

        data = config.data
        batch = data.classes_per_batch * data.images_per_class
        views = len(self.method.train_transforms(data)) * data.views
        generator = torch.Generator().manual_seed(config.seed)
        images = torch.randn(batch, views, 3, data.image_size, data.image_size, generator=generator)
        labels = torch.arange(data.classes_per_batch).repeat_interleave(data.images_per_class)
        self.images, self.labels, self.indices = self.trainer.prepare_batch((images, labels, torch.arange(batch)))

    @property
    def rows(self) -> int:
        """Images through the networks per step (views included)."""
        return len(self.images)

    def step(self) -> float:
        """One training step as the trainer runs it: loss, finiteness check, backward, update; the loss
        (NaN when it was not finite)."""
        from metrictransfer.errors import TrainingDivergedError

        try:
            return self.trainer.update(self.images, self.labels, self.indices)["loss"]
        except TrainingDivergedError:
            return float("nan")


def write_cub_tree(
    root: Path,
    train_per_class: int,
    test_per_class: int,
    size: tuple[int, int] = (500, 375),
    distinct: int = 64,
    seed: int = 0,
    by_class: bool = False,
) -> dict:
    """A synthetic CUB-200-2011 tree (images.txt, image_class_labels.txt, classes.txt, images/) of
    ``size`` JPEGs: classes 1–100 (train) with ``train_per_class`` images, 101–200 (test) with
    ``test_per_class``. ``distinct`` different pictures (smooth colour fields with fine noise, about the
    entropy of a photo) are written once and hard-linked under every listed name: decoding costs the
    same, the tree takes seconds to build and little disk. By default pictures cycle over the images, so
    every copy of a picture is in another class and Recall@K is 0 by construction; with ``by_class`` each
    class has its own picture (``distinct`` at least 200), and its copies make Recall@1 near 100 % when
    labels, order and evaluation are right: a check of the pipeline, not of learning. Returns the tree's
    facts (counts, mean bytes)."""
    if by_class and distinct < 200:
        raise ValueError(f"by_class needs a picture per class: distinct={distinct}, CUB has 200 classes")
    import os

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pool = root / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    width, height = size
    pictures = []
    for i in range(distinct):
        coarse = rng.uniform(0, 255, (height // 16 + 1, width // 16 + 1, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
        path = pool / f"{i:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        pictures.append(path)
    images, labels, names = [], [], []
    image_id = 0
    for class_id in range(1, 201):
        name = f"{class_id:03d}.Synthetic_{class_id}"
        names.append(f"{class_id} {name}")
        (root / "images" / name).mkdir(parents=True, exist_ok=True)
        for k in range(train_per_class if class_id <= 100 else test_per_class):
            image_id += 1
            rel = f"{name}/Synthetic_{class_id}_{k:04d}.jpg"
            target = root / "images" / rel
            picture = class_id - 1 if by_class else image_id % distinct
            try:
                os.link(pictures[picture], target)
            except OSError:  # a file system without hard links
                target.write_bytes(pictures[picture].read_bytes())
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {class_id}")
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "classes.txt").write_text("\n".join(names) + "\n")
    mean_bytes = sum(p.stat().st_size for p in pictures) / len(pictures)
    return {
        "root": str(root),
        "train_images": 100 * train_per_class,
        "test_images": 100 * test_per_class,
        "size": list(size),
        "distinct_pictures": distinct,
        "mean_jpeg_bytes": round(mean_bytes),
    }
