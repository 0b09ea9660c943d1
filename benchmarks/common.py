"""Helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`, so this folder is on sys.path)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


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
    """A method, its loader and its updater, set up as the trainer sets them up, for timed steps
    (benchmarks/cohort_step.py with data loading, benchmarks/step_overhead.py on a preloaded batch)."""

    def __init__(self, raw: dict, origin: str) -> None:
        import torch

        from metrictransfer.config import build_config
        from metrictransfer.data.registry import build_dataset
        from metrictransfer.engine.trainer import Updater, build_train_loader, configure_models, seed_everything
        from metrictransfer.methods import METHODS

        config = build_config(raw, origin=origin)
        if config.threads:
            torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        train_set = build_dataset(config.data, "train")
        self.method = METHODS[config.method](config, int(max(train_set.labels)) + 1)
        self.method.prepare_training_set(train_set)
        configure_models(self.method, config, torch.device("cpu"))
        self.method.train()
        self.loader, batches = build_train_loader(config, self.method, train_set, torch.device("cpu"))
        self.updater = Updater(self.method, config.optim, len(batches))
        self.batches = iter(self.loader)

    def next_batch(self) -> tuple:
        """The loader's next batch as training flattens it: images, labels and indices per view."""
        from metrictransfer.data.multiview import flatten_views

        try:
            views, labels, indices = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            views, labels, indices = next(self.batches)
        images, labels = flatten_views(views, labels)
        return images, labels, indices.repeat_interleave(views.shape[1])

    def update(self, images, labels, indices) -> None:
        """One training step on the given batch: loss, backward, optimiser update."""
        loss, _ = self.method.training_loss(images, labels, indices)
        self.updater.backward(loss)
        self.updater.step()

    def step(self) -> None:
        self.update(*self.next_batch())
