"""Training views per second per loader worker: today's pipeline against uint8 views and the decoded-image cache.

    .venv/bin/python -m benchmarks.loader [--per-class 59] [--workers 1 2] [--batches 8] [--repeats 3]

On a synthetic CUB-200-2011 training split (benchmarks/common.py: 500 × 375 JPEGs, 100 classes) with the
paper's augmentation at 224 px (RandomResizedCrop + flip, 2 views of each image, 45 classes × 2 images per
batch), the trainer's own loader (``build_train_loader``) is timed in four ways, interleaved, ``--repeats``
rounds of ``--batches`` batches after one warm-up batch:

- *before*: what the trainer did before: views converted to float and normalised in the workers;
- *uint8*: views leave the workers as uint8 and are converted and normalised by the consumer (the trainer,
  on the device; here on the CPU, and that time is counted);
- *cache*: ``data.cache: memory``, images decoded once at a short side of 256 px (its one-off build is timed
  apart), float views from the workers;
- *uint8 + cache*: both, the trainer's path with ``data.cache: memory``.

Also where one view's time goes (open and decode, RandomResizedCrop, flip, to tensor, float and normalise),
one image at a time in this process. Writes benchmarks/results/loader.md and .json.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import environment, parser, write_cub_tree, write_results

WAYS = ("before", "uint8", "cache", "uint8 + cache")


def _config(root: str, workers: int, cache: str):
    from metrictransfer.config import build_config

    raw = {
        "method": "source",
        "data": {"dataset": "cub", "root": root, "image_size": 224, "num_workers": workers, "cache": cache},
        "model": {"backbone": "resnet10t", "embedding_dim": 16},  # the loader does not use the model
    }
    return build_config(raw, origin="benchmarks/loader.py")


def _loaders(root: str, workers: int, cached):
    """{way: (loader, finish)}: ``finish(views)`` is the consumer's part (the trainer's, on the device)."""
    from torch.utils.data import DataLoader

    from metrictransfer.data.multiview import MultiViewDataset
    from metrictransfer.data.registry import build_dataset
    from metrictransfer.engine.trainer import build_train_loader
    from metrictransfer.methods import METHODS

    config = _config(root, workers, "none")
    train_set = build_dataset(config.data, "train")
    method = METHODS["source"](config, 100)
    device = torch.device("cpu")
    loaders = {}
    for way in WAYS:
        loader, _ = build_train_loader(config, method, train_set, device, images=cached if "cache" in way else None)
        if "uint8" not in way:  # before: the same loader, the views finished in the workers
            made = loader.dataset
            finished = MultiViewDataset(made.dataset, made.transforms, config.data.views, seed=config.seed, finish=True)
            loader = DataLoader(
                finished,
                batch_sampler=loader.batch_sampler,
                num_workers=workers,
                collate_fn=loader.collate_fn,
                persistent_workers=workers > 0,
                generator=torch.Generator().manual_seed(config.seed),
            )
        loaders[way] = loader
    return loaders, method, config


def _consumer(loader, per_transform: int):
    """What the trainer does to a batch's views before the step: finishes uint8 views (here on the CPU)."""
    from metrictransfer.data.multiview import finish_views

    tails = loader.dataset.unfinished_tails()
    return (lambda views: views) if tails is None else (lambda views: finish_views(views, tails, per_transform))


def _timed(loader, finish, batches: int) -> tuple[float, int]:
    """(seconds, views) for ``batches`` batches after one warm-up batch (worker start-up)."""
    it = iter(loader)
    finish(next(it)[0])
    started, views = time.perf_counter(), 0
    for _ in range(batches):
        batch = next(it)
        views += finish(batch[0]).shape[0] * batch[0].shape[1]
    return time.perf_counter() - started, views


def profile_view(root: Path, count: int = 200) -> list[tuple[str, float]]:
    """Milliseconds per image of each part of one training view, one image at a time."""
    from torchvision.transforms import v2

    from metrictransfer.data.decode import open_rgb8
    from metrictransfer.data.transforms import build_transform, split_per_batch

    paths = sorted((root / "images").rglob("*.jpg"))[:count]
    head, tail = split_per_batch(build_transform("paper", True, 224))
    images = [open_rgb8(p) for p in paths]
    crop, flip, to_image = v2.RandomResizedCrop(224), v2.RandomHorizontalFlip(), v2.ToImage()
    crops = [crop(image) for image in images]
    tensors = [to_image(flip(c)) for c in crops]
    parts = {
        "open and decode (Pillow, faithful RGB)": lambda i: open_rgb8(paths[i]),
        "RandomResizedCrop to 224 (PIL)": lambda i: crop(images[i]),
        "horizontal flip (PIL)": lambda i: flip(crops[i]),
        "to uint8 tensor": lambda i: to_image(crops[i]),
        "to float and normalise": lambda i: tail(tensors[i][None]),
    }
    out = []
    for name, part in parts.items():
        started = time.perf_counter()
        for i in range(len(paths)):
            part(i)
        out.append((name, 1000 * (time.perf_counter() - started) / len(paths)))
    started = time.perf_counter()
    for i in range(len(paths)):
        tail(head(open_rgb8(paths[i]))[None])
    out.append(("one view, all of it", 1000 * (time.perf_counter() - started) / len(paths)))
    return out


def main() -> int:
    options = parser(__doc__, name="loader")
    options.add_argument("--per-class", type=int, default=59, help="training images per class (100 classes; CUB has 58-59)")
    options.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    options.add_argument("--batches", type=int, default=8, help="timed batches per way and round")
    options.add_argument("--repeats", type=int, default=3)
    options.add_argument("--threads", type=int, default=1, help="torch threads of this process (the workers use 1 each)")
    args = options.parse_args()
    torch.set_num_threads(args.threads)

    from metrictransfer.data.cache import memory_cache
    from metrictransfer.data.registry import build_dataset

    work = Path(tempfile.mkdtemp(prefix="loader-"))
    try:
        tree = write_cub_tree(work / "cub", train_per_class=args.per_class, test_per_class=1)
        profile = profile_view(work / "cub")
        cells: dict[tuple[int, str], list[float]] = {}
        builds = {}
        for workers in args.workers:
            data = _config(tree["root"], workers, "memory").data
            started = time.perf_counter()
            cached = memory_cache(build_dataset(data, "train"), data.image_size, workers)
            builds[workers] = {"seconds": round(time.perf_counter() - started, 1), "gb": round(cached.nbytes() / 1e9, 2)}
            loaders, method, config = _loaders(tree["root"], workers, cached)
            consumers = {way: _consumer(loaders[way], config.data.views) for way in WAYS}
            for _ in range(args.repeats):
                for way in WAYS:
                    seconds, views = _timed(loaders[way], consumers[way], args.batches)
                    cells.setdefault((workers, way), []).append(views / seconds / workers)
            del loaders, cached
    finally:
        shutil.rmtree(work, ignore_errors=True)

    env = environment("cpu")
    rows = []
    for workers in args.workers:
        base = statistics.median(cells[(workers, "before")])
        for way in WAYS:
            per_worker = statistics.median(cells[(workers, way)])
            rounds = [round(v, 1) for v in cells[(workers, way)]]
            rows.append(
                {
                    "workers": workers,
                    "way": way,
                    "views_per_s_per_worker": round(per_worker, 1),
                    "ratio": round(per_worker / base, 2),
                    "rounds": rounds,
                }
            )
    record = {
        "environment": env,
        "tree": tree,
        "profile_ms": profile,
        "cache_build": builds,
        "rows": rows,
        "args": vars(args),
    }
    lines = [
        "# Training loader: views per second per worker",
        "",
        f"{tree['train_images']:,} synthetic training JPEGs of {tree['size'][0]} × {tree['size'][1]} "
        f"({tree['mean_jpeg_bytes'] / 1e3:.0f} kB each); the paper's augmentation at 224 px, 2 views per image, "
        f"batches of 90 images. Medians of {args.repeats} interleaved rounds of {args.batches} batches.",
        "",
        "| workers | way | views/s per worker | × before |",
        "|---:|---|---:|---:|",
    ]
    lines += [f"| {r['workers']} | {r['way']} | {r['views_per_s_per_worker']:,.0f} | {r['ratio']:.2f}× |" for r in rows]
    lines += ["", "Cache build (once per run, before the first epoch):", ""]
    lines += [
        f"- {w} worker{'s' if w > 1 else ''}: {b['seconds']} s for {tree['train_images']:,} images, {b['gb']} GB" for w, b in builds.items()
    ]
    lines += ["", "Where one view's time goes (one image at a time, this process, ms per image):", "", "| part | ms |", "|---|---:|"]
    lines += [f"| {name} | {ms:.2f} |" for name, ms in profile]
    write_results(args.name, lines, record, rerun="loader")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
