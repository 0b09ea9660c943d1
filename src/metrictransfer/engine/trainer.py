"""The training loop shared by every method: data, optimiser, schedule, evaluation, checkpoints, logs."""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from metrictransfer import __version__
from metrictransfer.config import RunConfig, config_to_dict, resume_differences, save_config
from metrictransfer.data.holdout import split_holdout
from metrictransfer.data.multiview import MultiViewDataset, collate_readable, flatten_views
from metrictransfer.data.registry import build_dataset
from metrictransfer.data.sampler import ClassBalancedBatchSampler, RankBatches, ShuffledBatchSampler
from metrictransfer.data.transforms import build_transform
from metrictransfer.engine import distributed
from metrictransfer.engine.checkpoint import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    load_checkpoint,
    run_checkpoints,
    save_run_checkpoint,
)
from metrictransfer.engine.interrupt import GracefulStop, TrainingInterrupted
from metrictransfer.engine.logging import TensorBoardLog, plot_recall, write_csv
from metrictransfer.engine.run_folder import claim_run_folder, remove_if_unused
from metrictransfer.errors import CheckpointError, ConfigError, DamagedCheckpointError, TrainingDivergedError
from metrictransfer.evaluation import ensemble_embeddings, extract_embeddings, retrieval_metrics
from metrictransfer.io import atomic_copy, atomic_write_text
from metrictransfer.methods import METHODS
from metrictransfer.methods.classifier import accuracy
from metrictransfer.models import EmbeddingModel


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but CUDA is not available here; use device: auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(groups: list[dict], config) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: linear warm-up, then cosine decay to zero over the remaining steps (or constant)."""
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_train_loader(
    config: RunConfig, method, train_set, device: torch.device, ranks: distributed.Ranks | None = None
) -> tuple[DataLoader, RankBatches]:
    """The training batches: class-balanced P × K global batches (shuffled when the method ignores
    labels), of which this process loads its slice; each image decoded once and augmented into every
    view the method's models need, the augmentation seeded by (seed, epoch, image)."""
    data = config.data
    ranks = ranks or distributed.Ranks()
    batch = data.classes_per_batch * data.images_per_class
    if method.uses_labels:
        sampler = ClassBalancedBatchSampler(np.asarray(train_set.labels), data.classes_per_batch, data.images_per_class, seed=config.seed)
    else:  # batches of P × K images drawn without looking at labels
        sampler = ShuffledBatchSampler(len(train_set), batch, seed=config.seed)
    if batch % ranks.world:
        raise ConfigError(
            f"data.classes_per_batch × data.images_per_class = {batch} images per global batch cannot be split "
            f"evenly over {ranks.world} processes; make it a multiple of {ranks.world}"
        )
    batches = RankBatches(sampler, batch, ranks.rank, ranks.world)
    loader = DataLoader(
        MultiViewDataset(train_set, method.train_transforms(data), data.views, seed=config.seed),
        batch_sampler=batches,
        num_workers=data.num_workers,
        collate_fn=collate_readable,  # drops images skipped by data.skip_bad_images
        pin_memory=device.type == "cuda",
        persistent_workers=data.num_workers > 0,
        # workers' own seeds are drawn from this, not from the global stream a resumed run restores
        generator=torch.Generator().manual_seed(config.seed),
    )
    return loader, batches


class Updater:
    """One optimiser and learning-rate schedule per update group of the method. Call :meth:`step` after
    each backward pass: a group with period τ steps on every τ-th call, its gradients accumulating in
    between, and its schedule spans its own updates (1/τ as many)."""

    def __init__(self, method, optim_config, steps_per_epoch: int, scaler: torch.amp.GradScaler | None = None) -> None:
        self.method = method
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.grad_clip = optim_config.grad_clip
        self.groups = method.update_groups(optim_config.lr)
        self.optimizers = {g.name: build_optimizer(g.params, optim_config) for g in self.groups}
        self.schedulers = {
            g.name: build_scheduler(self.optimizers[g.name], optim_config, steps_per_epoch / g.every) for g in self.groups
        }
        self.updates = {g.name: 0 for g in self.groups}
        self.iteration = 0

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self) -> None:
        self.iteration += 1
        stepped = False
        for group in self.groups:
            if self.iteration % group.every:
                continue  # gradients accumulate until this group's turn comes
            optimizer = self.optimizers[group.name]
            params = self._params(group.name)
            distributed.average_gradients(params)
            if any(p.grad is not None for p in params):  # none: every step of its period was skipped (on_nan)
                if self.scaler is not None:
                    self.scaler.unscale_(optimizer)
                if self.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
                if self.scaler is not None:
                    self.scaler.step(optimizer)
                    stepped = True
                else:
                    optimizer.step()
                self.updates[group.name] += 1
            self.schedulers[group.name].step()
            optimizer.zero_grad(set_to_none=True)
            self.method.after_update(group.name)
        if stepped:
            self.scaler.update()

    def lr(self) -> float:
        return self.optimizers[self.groups[0].name].param_groups[0]["lr"]

    def _params(self, name: str) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizers[name].param_groups for p in group["params"]]

    def state_dict(self) -> dict:
        """Optimisers, schedules, update counts, and the gradients a group has accumulated but not yet
        applied (τ need not divide an epoch's steps: without them a resumed run would differ)."""
        pending = {
            g.name: [None if p.grad is None else p.grad.detach().clone() for p in self._params(g.name)]
            for g in self.groups if self.iteration % g.every
        }
        return {
            "optimizers": {name: o.state_dict() for name, o in self.optimizers.items()},
            "schedulers": {name: s.state_dict() for name, s in self.schedulers.items()},
            "updates": dict(self.updates),
            "iteration": self.iteration,
            "pending_gradients": pending,
            "grad_scaler": None if self.scaler is None else self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        optimizers = state.get("optimizers") or {"model": state["optimizer"]}  # single-model runs before cohorts
        schedulers = state.get("schedulers") or {"model": state["scheduler"]}
        for name in self.optimizers:
            self.optimizers[name].load_state_dict(optimizers[name])
            self.schedulers[name].load_state_dict(schedulers[name])
        self.updates.update(state.get("updates", {}))
        self.iteration = state["iteration"]
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
        for name, grads in state.get("pending_gradients", {}).items():
            for param, grad in zip(self._params(name), grads):
                param.grad = None if grad is None else grad.to(param.device)


def _rng_state() -> dict:
    """Every random stream, in types a ``weights_only`` load accepts."""
    numpy = np.random.get_state(legacy=False)
    numpy["state"] = {"key": numpy["state"]["key"].tolist(), "pos": int(numpy["state"]["pos"])}
    state = {"python": random.getstate(), "numpy": numpy, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    numpy = dict(state["numpy"])
    numpy["state"] = {"key": np.asarray(numpy["state"]["key"], dtype=np.uint32), "pos": numpy["state"]["pos"]}
    np.random.set_state(numpy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def evaluate_model(model, dataset, config: RunConfig, device: torch.device, progress: bool = False) -> dict[str, float]:
    """Recall@K, MAP@R and R-Precision of one model on an evaluation dataset (single test view per image);
    query against gallery when the dataset has ``is_query`` / ``is_gallery`` masks (In-Shop)."""
    return evaluate_models({"model": model}, dataset, config, device, progress)


class _Stacked(torch.nn.Module):
    """Several models' embeddings side by side, so a cohort's evaluation decodes each image once."""

    def __init__(self, models: list[torch.nn.Module]) -> None:
        super().__init__()
        self.models = torch.nn.ModuleList(models)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(images) for m in self.models], dim=1)


def evaluate_models(models: dict, dataset, config: RunConfig, device: torch.device, progress: bool = False) -> dict[str, float]:
    """One model: its metrics. Several (a cohort): ``name/metric`` for each, ``ensemble/metric`` for the
    concatenation of their L2-normalised embeddings, and the ensemble's again without prefix (the run's
    headline numbers)."""
    stacked = _Stacked(list(models.values()))
    ranks = distributed.current()
    if ranks.world > 1:  # each process embeds every N-th image; all of them then hold every row, in order
        dataset = Subset(dataset, range(ranks.rank, len(dataset), ranks.world))
    embeddings, labels, indices = extract_embeddings(
        stacked, dataset, config.eval.batch_size, device, config.data.num_workers, progress=progress, return_indices=True
    )
    if ranks.world > 1:
        embeddings, labels, indices = (distributed.gather(t.to(device)).cpu() for t in (embeddings, labels, indices))
        order = torch.argsort(indices)
        embeddings, labels, indices = embeddings[order], labels[order], indices[order]
        dataset = dataset.dataset
    masks = query_gallery_masks(dataset, indices)

    def metrics(x: torch.Tensor) -> dict[str, float]:
        return retrieval_metrics(x, labels, config.eval.recall_at, config.eval.metric, **masks)

    if len(models) == 1:
        return metrics(embeddings)
    parts = embeddings.split([m.embedding_dim for m in models.values()], dim=1)
    row: dict[str, float] = {}
    for name, part in zip(models, parts):
        row.update({f"{name}/{k}": v for k, v in metrics(part).items()})
    ensemble = metrics(ensemble_embeddings(list(parts)))
    row.update({f"ensemble/{k}": v for k, v in ensemble.items()})
    row.update(ensemble)
    return row


def classifier_accuracy(model, dataset, config: RunConfig) -> float:
    loader = DataLoader(dataset, batch_size=config.eval.batch_size, num_workers=config.data.num_workers,
                        collate_fn=collate_readable)
    return accuracy(model, loader)


def query_gallery_masks(dataset, indices: torch.Tensor) -> dict:
    """``is_query`` / ``is_gallery`` of the embedded items (skipped images have no row), if the data has them."""
    base = getattr(dataset, "dataset", dataset)  # through the MultiViewDataset wrapper
    if getattr(base, "is_query", None) is None:
        return {}
    return {"is_query": torch.as_tensor(base.is_query)[indices], "is_gallery": torch.as_tensor(base.is_gallery)[indices]}


def test_dataset(config: RunConfig) -> MultiViewDataset:
    """The evaluation set: the test split of ``eval.data`` when given (e.g. training on an unlabelled
    folder), else of ``data``."""
    data = config.eval.data or config.data
    return MultiViewDataset(build_dataset(data, "test"), build_transform(data.transform, False, data.image_size, data.normalization))


def configure_models(method, config: RunConfig, device: torch.device) -> None:
    """The run's precision, memory format and compilation, applied to every embedding model of the
    method (the frozen source too: it runs in the run's precision, in inference only)."""
    dtype = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[config.precision]
    for module in method.modules():
        if isinstance(module, EmbeddingModel):
            module.autocast_dtype = dtype
            if config.compile:
                module.compile()
    if config.channels_last:
        method.to(memory_format=torch.channels_last)
    if distributed.current().world > 1 and device.type == "cuda" and config.model.sync_batchnorm:
        for model in method.trainable().values():  # replaced in place, same parameter names: checkpoints unchanged
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def check_run_options(config: RunConfig, device: torch.device, method) -> None:
    if config.precision == "16" and device.type != "cuda":
        raise ConfigError("precision: 16 (float16 with a gradient scaler) needs a GPU; on the CPU use precision: bf16")
    if config.precision == "16" and any(g.every > 1 for g in method.update_groups(config.optim.lr)):
        raise ConfigError(
            "precision: 16 cannot be combined with members that accumulate gradients (mutual.update_every > 1): "
            "the gradient scale may change within their period; use precision: bf16"
        )


def make_deterministic() -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for deterministic results
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False


def train(config: RunConfig, out_dir: str | Path, resume: bool = False, progress: bool | None = None,
          overwrite: bool = False) -> dict:
    """Train one run into ``out_dir``; returns the results written to ``results.json``.

    Every epoch ends with an evaluation on the test split (``eval.every``), a CSV log row and an
    atomically written checkpoint (also every ``checkpoint.every_steps`` steps, and when SIGINT or
    SIGTERM arrives), so ``resume=True`` continues from the last checkpoint, in the middle of an epoch
    if need be, and in deterministic mode ends with the same weights as an uninterrupted run.
    A folder that holds another run is refused unless ``overwrite``; the folder is locked while the
    run trains. Under torchrun every process runs this; only the first writes files and holds the lock.
    """
    out = Path(out_dir)
    ranks, device_name = distributed.setup(config.device)
    created = not out.exists()
    lock = claim_run_folder(out, resume, overwrite) if ranks.main else None
    try:
        return _train(config, out, resume, progress, ranks, device_name)
    except BaseException:
        if lock is not None and created:
            lock.release()
            remove_if_unused(out)  # a start that failed (bad data, Ctrl-C) leaves no empty run folder
        raise
    finally:
        if lock is not None:
            lock.release()


def _train(config: RunConfig, out: Path, resume: bool, progress: bool | None, ranks: distributed.Ranks,
           device_name: str) -> dict:
    interactive = ranks.main and (sys.stderr.isatty() if progress is None else progress)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        make_deterministic()
    device = resolve_device(device_name)
    seed_everything(config.seed)

    train_set = build_dataset(config.data, "train")
    holdout = None
    if config.data.holdout_images > 0:
        train_set, holdout = split_holdout(train_set, config.data.holdout_images)
    train_labels = np.asarray(train_set.labels)
    num_classes = int(train_labels.max()) + 1 if (train_labels >= 0).any() else 0
    method = METHODS[config.method](config, num_classes)
    if method.uses_labels and (train_labels < 0).any():
        raise ConfigError(
            f"dataset {config.data.dataset!r} has no labels, and method {config.method!r} needs them; "
            "without labels use method: selfsup, or transfer with the relaxed contrastive loss alone (metric_weight 0)"
        )
    check_run_options(config, device, method)
    if config.method == "classifier":  # accuracy on held-out images of the training classes
        data = config.data
        eval_set = MultiViewDataset(holdout, build_transform(data.transform, False, data.image_size, data.normalization))
    else:
        eval_set = test_dataset(config)
    method.prepare_training_set(train_set)
    method = method.to(device)
    configure_models(method, config, device)
    data = config.data
    loader, batches = build_train_loader(config, method, train_set, device, ranks)
    steps_per_epoch = len(batches.batches)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "16")
    updater = Updater(method, config.optim, steps_per_epoch, scaler)

    history: list[dict] = []
    position = {"epoch": 0, "batches_done": 0, "totals": {}}
    if resume:
        restored = _restore(out, config, method, updater)
        if restored is not None:
            history, position = restored["history"], restored["position"]
    if ranks.main:
        save_config(config, out / "config.yaml")

    def save(epoch: int, batches_done: int, totals: dict) -> Path:
        if not ranks.main:  # every rank holds the same state; only the first writes it
            return out / "checkpoint.pt"
        state = {
            "format": FORMAT_VERSION,
            "version": __version__,
            "config": config_to_dict(config),
            "method": config.method,
            "output": method.output,
            "models": {name: m.state_dict() for name, m in method.trainable().items()},
            "architectures": {name: m.architecture() for name, m in method.trainable().items() if hasattr(m, "architecture")},
            "label_loss": None if method.label_loss is None else method.label_loss.state_dict(),
            **updater.state_dict(),
            "rng": _rng_state(),
            "epoch": epoch,  # epochs finished
            "step": updater.iteration,
            "position": {"epoch": epoch, "batches_done": batches_done, "totals": dict(totals)},
            "history": history,
        }
        return save_run_checkpoint(state, out, config.checkpoint.keep)

    every = config.checkpoint.every_steps
    tensorboard = TensorBoardLog(out / "tensorboard") if config.logging.tensorboard and ranks.main else None
    with GracefulStop() as stop:
        for epoch in range(position["epoch"], config.optim.epochs):
            method.train()
            resumed_here = epoch == position["epoch"]
            done = position["batches_done"] if resumed_here else 0
            totals: dict[str, float] = dict(position["totals"]) if resumed_here else {}
            batches.start(epoch, done)
            started = time.perf_counter()
            bar = tqdm(loader, desc=f"{config.name or config.method} epoch {epoch + 1}/{config.optim.epochs}",
                       disable=not interactive, leave=False, unit="batch", initial=done, total=steps_per_epoch)
            for views, labels, indices in bar:
                totals["skipped_images"] = totals.get("skipped_images", 0) + batches.part - len(labels)
                indices = indices.repeat_interleave(views.shape[1])
                images, labels = flatten_views(views, labels)
                images = images.to(device, memory_format=torch.channels_last if config.channels_last else torch.contiguous_format)
                loss, logs = method.training_loss(images, labels.to(device), indices.to(device))
                finite, stopping = distributed.step_flags(bool(torch.isfinite(loss)), stop.requested, device)
                if not finite:
                    if config.optim.on_nan == "error":
                        raise TrainingDivergedError(_non_finite_message(epoch, done, updater.iteration + 1, logs, out))
                    totals["skipped_steps"] = totals.get("skipped_steps", 0) + 1
                else:
                    updater.backward(loss)
                    for key, value in logs.items():
                        totals[key] = totals.get(key, 0.0) + value
                updater.step()
                done += 1
                bar.set_postfix(loss=f"{logs['loss']:.4f}")
                if stopping:
                    path = save(epoch, done, totals)
                    raise TrainingInterrupted(stop.signal_name, updater.iteration, path)
                if every and updater.iteration % every == 0 and done < steps_per_epoch:
                    save(epoch, done, totals)
            row = {"epoch": epoch + 1, "step": updater.iteration, "lr": updater.lr()}
            if len(updater.groups) > 1:
                row.update({f"{name}/updates": count for name, count in updater.updates.items()})
            steps_counted = max(1, steps_per_epoch - totals.get("skipped_steps", 0))
            row.update({k: v / steps_counted for k, v in totals.items() if k not in ("skipped_images", "skipped_steps")})
            row["train_seconds"] = round(time.perf_counter() - started, 2)
            if data.skip_bad_images:
                row["skipped_images"] = int(totals.get("skipped_images", 0))
            if config.optim.on_nan == "skip":
                row["skipped_steps"] = int(totals.get("skipped_steps", 0))
            last = epoch + 1 == config.optim.epochs
            if last or (config.eval.every and (epoch + 1) % config.eval.every == 0):
                if config.method == "classifier":
                    row["accuracy"] = classifier_accuracy(method.output_model(), eval_set, config)
                else:
                    row.update(evaluate_models(method.evaluation_models(), eval_set, config, device, progress=interactive))
            history.append(row)
            if ranks.main:
                print(_epoch_line(config, row), flush=True)
            save(epoch + 1, 0, {})
            if ranks.main:
                write_csv(history, out / "log.csv")
            if tensorboard is not None:
                tensorboard.write(row)
    if tensorboard is not None:
        tensorboard.close()

    results = _results(config, history)
    if ranks.main:
        atomic_write_text(json.dumps(results, indent=2), out / "results.json")
        primary = _primary(history)
        plot_recall(_curves(config, history, primary), out / "recall.png", primary)
    distributed.barrier()
    return results


def _restore(out: Path, config: RunConfig, method, updater: Updater) -> dict | None:
    """Load the newest readable checkpoint of ``out`` into the method and updater; None when the run
    has none yet (it starts from scratch). A damaged newest file falls back to an older kept one."""
    files = run_checkpoints(out)
    if not files:
        return None
    damaged = []
    for file in files:
        try:
            state = load_checkpoint(file)
            break
        except DamagedCheckpointError as err:
            damaged.append(str(err))
    else:
        raise DamagedCheckpointError(f"cannot resume {out}: every checkpoint is damaged; " + "; ".join(damaged))
    if damaged:
        latest = out / CHECKPOINT_NAME
        if file != latest:  # repair the run's checkpoint.pt, so that evaluate, export and index work again
            atomic_copy(file, latest)
        print(f"warning: resuming from {file} (copied to {latest}); newer checkpoints are damaged: {'; '.join(damaged)}",
              file=sys.stderr)
    if state.get("version") != __version__:
        raise CheckpointError(
            f"cannot resume {out}: {file} was written by metrictransfer {state.get('version')}, this is {__version__}; "
            "resume it with that version (pip install metrictransfer==VERSION)"
        )
    changed = resume_differences(state["config"], config_to_dict(config))
    if changed:
        raise ConfigError(
            f"cannot resume {out}: the configuration differs from the one the run started with: " + "; ".join(changed)
        )
    for name, model in method.trainable().items():
        model.load_state_dict(state["models"][name])
    if method.label_loss is not None:
        method.label_loss.load_state_dict(state["label_loss"])
    updater.load_state_dict(state)
    _set_rng_state(state["rng"])
    return {"history": state["history"], "position": state["position"]}


def _non_finite_message(epoch: int, batch: int, step: int, logs: dict, out: Path) -> str:
    terms = ", ".join(f"{k} {v:.4g}" for k, v in logs.items())
    kept = out / "checkpoint.pt"
    last = f"the last good checkpoint is {kept}" if kept.is_file() else "no checkpoint was written yet"
    return (
        f"non-finite loss at step {step} (epoch {epoch + 1}, batch {batch + 1}): {terms}; {last}. "
        "Lower optim.lr or set optim.grad_clip, check the data, or skip such steps with --on-nan skip"
    )


def _primary(history: list[dict]) -> str:
    """The metric that runs are compared by: accuracy for classifiers, Recall@1 otherwise."""
    return "accuracy" if any("accuracy" in row for row in history) else "recall@1"


def _curves(config: RunConfig, history: list[dict], primary: str) -> dict[str, list[tuple[int, float]]]:
    """One curve per evaluated model: the run's, or every cohort member's and the ensemble's."""
    prefixes = sorted({k.split("/")[0] for row in history for k in row if k.endswith("/" + primary)})
    if not prefixes:
        return {config.name or config.method: _curve(history, primary)}
    return {prefix: _curve(history, f"{prefix}/{primary}") for prefix in prefixes}


def _curve(history: list[dict], metric: str = "recall@1") -> list[tuple[int, float]]:
    return [(row["epoch"], row[metric]) for row in history if metric in row]


def _epoch_line(config: RunConfig, row: dict) -> str:
    parts = [f"[{config.name or config.method}] epoch {row['epoch']}/{config.optim.epochs}", f"loss {row.get('loss', float('nan')):.4f}"]
    parts += [f"{k} {v:.4f}" for k, v in _metrics_of(row).items() if "/" not in k or k.endswith("/recall@1")]
    parts.append(f"{row['train_seconds']:.1f}s")
    return "  ".join(parts)


def _metrics_of(row: dict) -> dict[str, float]:
    def is_metric(key: str) -> bool:
        name = key.rsplit("/", 1)[-1]  # cohorts: member0/recall@1, ensemble/recall@1
        return name.startswith("recall@") or name in ("map@r", "r_precision", "nmi", "accuracy")

    return {k: v for k, v in row.items() if is_metric(k)}


def _results(config: RunConfig, history: list[dict]) -> dict:
    """Final-epoch metrics; the best epoch is reported too but labelled as chosen on the test split."""
    primary = _primary(history)
    evaluated = [row for row in history if primary in row]
    final = _metrics_of(evaluated[-1])
    best = max(evaluated, key=lambda r: r[primary])
    return {
        "name": config.name,
        "method": config.method,
        "epochs": config.optim.epochs,
        "final": final,
        "best_epoch_selected_on_test_split": {
            "epoch": best["epoch"],
            **_metrics_of(best),
        },
        "history": history,
    }
