"""The training loop shared by every method: data, optimiser, schedule, evaluation, checkpoints; the
logs and files around it are callbacks (metrictransfer.engine.callbacks)."""

from __future__ import annotations

import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, cast

import numpy as np
import torch
from torch.utils.data import DataLoader

from metrictransfer import __version__
from metrictransfer.config import OptimConfig, RunConfig, config_to_dict, resume_differences, save_config
from metrictransfer.data.cache import MemoryCache, memory_cache
from metrictransfer.data.holdout import split_holdout
from metrictransfer.data.multiview import MultiViewDataset, collate_readable, finish_views, flatten_views
from metrictransfer.data.protocol import RetrievalDataset
from metrictransfer.data.registry import build_dataset
from metrictransfer.data.sampler import ClassBalancedBatchSampler, RankBatches, ShuffledBatchSampler, check_batch_fits
from metrictransfer.data.validation import split_validation
from metrictransfer.data.workers import loader_workers
from metrictransfer.engine.callbacks import (
    BestModel,
    Callback,
    Checkpoints,
    CsvLog,
    DataWaitHint,
    EpochLine,
    FinalFiles,
    ProgressBar,
    TensorBoard,
)
from metrictransfer.engine.interrupt import GracefulStop, ReportInterrupted, TrainingInterrupted
from metrictransfer.engine.logging import write_csv  # write_csv looked up here when a run starts (tests replace it)
from metrictransfer.engine.results import BEST_NAME, best_row, metrics_of, run_results, selection_key, validated_results
from metrictransfer.engine.run_folder import RunLock, claim_run_folder
from metrictransfer.errors import CheckpointError, ConfigError, DamagedCheckpointError, TrainingDivergedError
from metrictransfer.evaluation.evaluate import check_recall_ranks
from metrictransfer.evaluation.kept_views import keep_views
from metrictransfer.io import atomic_copy
from metrictransfer.methods import METHODS
from metrictransfer.methods.base import Method
from metrictransfer.models import EmbeddingModel
from metrictransfer.models.pretrained import PretrainedFeatures
from metrictransfer.output_folder import remove_if_unused
from metrictransfer.runtime import distributed
from metrictransfer.runtime.checkpoint import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    load_checkpoint,
    run_checkpoints,
    save_checkpoint,
    save_run_checkpoint,
)
from metrictransfer.runtime.device import resolve_device
from metrictransfer.runtime.provenance import TRAINING_DATA_KEY, training_data_record

FLOAT16_INITIAL_SCALE = 2.0**10  # the float16 gradient scaler's first scale; see Trainer.__init__


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(groups: list[dict[str, Any]], config: OptimConfig) -> torch.optim.Optimizer:
    if config.optimizer in ("adam", "adamw"):
        adam = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        return adam(groups, lr=config.lr, weight_decay=config.weight_decay, fused=_fused_adam_runs(groups) or None)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _fused_adam_runs(groups: list[dict[str, Any]]) -> bool:
    """Whether Adam's fused kernel (one pass over each parameter instead of about eight) takes these
    parameters: on CUDA, and on the CPU from torch 2.4. On the CPU it made Adam's update 3-4× faster
    and small runs' steps about a third faster (benchmarks/optimizer_step.py)."""
    params = [p for group in groups for p in group["params"]]
    devices = {p.device.type for p in params}
    if not params or not devices <= {"cpu", "cuda"} or not all(p.dtype.is_floating_point for p in params):
        return False
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return "cpu" not in devices or (major, minor) >= (2, 4)


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, steps_per_epoch: float) -> torch.optim.lr_scheduler.LambdaLR:
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
    config: RunConfig,
    method: Method,
    train_set: Any,
    device: torch.device,
    ranks: distributed.Ranks | None = None,
    images: RetrievalDataset | None = None,
) -> tuple[DataLoader[Any], RankBatches]:
    """The training batches: class-balanced P × K global batches (shuffled when the method ignores
    labels), of which this process loads its slice; each image decoded once and augmented into every
    view the method's models need, the augmentation seeded by (seed, epoch, image). The views leave the
    loader as uint8 where the transforms allow (the dataset's ``unfinished_tails``, which
    :meth:`Trainer.prepare_batch` applies on the device). ``images``: where the images are read from
    when not ``train_set`` itself (its decoded-image cache, ``data.cache``)."""
    data = config.data
    ranks = ranks or distributed.Ranks()
    batch = data.classes_per_batch * data.images_per_class
    sampler: ClassBalancedBatchSampler | ShuffledBatchSampler
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
        MultiViewDataset(
            train_set if images is None else images, method.train_transforms(data), data.views, seed=config.seed, finish=False
        ),
        batch_sampler=batches,
        num_workers=loader_workers(data.num_workers),  # at most one per core
        collate_fn=collate_readable,  # drops images skipped by data.skip_bad_images
        pin_memory=device.type == "cuda",
        persistent_workers=loader_workers(data.num_workers) > 0,
        # workers' own seeds are drawn from this, not from the global stream a resumed run restores
        generator=torch.Generator().manual_seed(config.seed),
    )
    return loader, batches


class Updater:
    """One optimiser and learning-rate schedule per update group of the method. Call :meth:`step` after
    each backward pass: a group with period τ steps on every τ-th call, its gradients accumulating in
    between, and its schedule spans its own updates (1/τ as many)."""

    def __init__(self, method: Method, optim_config: OptimConfig, steps_per_epoch: int, scaler: torch.amp.GradScaler | None = None) -> None:
        self.method = method
        self.scaler = scaler if scaler is not None and scaler.is_enabled() else None
        self.grad_clip = optim_config.grad_clip
        self.groups = method.update_groups(optim_config.lr)
        self.optimizers = {g.name: build_optimizer(g.params, optim_config) for g in self.groups}
        self.schedulers = {g.name: build_scheduler(self.optimizers[g.name], optim_config, steps_per_epoch / g.every) for g in self.groups}
        self.updates = {g.name: 0 for g in self.groups}
        self.iteration = 0

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated

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
        if stepped and self.scaler is not None:  # stepped: by the scaler
            self.scaler.update()

    def lr(self) -> float:
        return cast(float, self.optimizers[self.groups[0].name].param_groups[0]["lr"])

    def _params(self, name: str) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizers[name].param_groups for p in group["params"]]

    def state_dict(self) -> dict[str, Any]:
        """Optimisers, schedules, update counts, and the gradients a group has accumulated but not yet
        applied (τ need not divide an epoch's steps: without them a resumed run would differ)."""
        pending = {
            g.name: [None if p.grad is None else p.grad.detach().clone() for p in self._params(g.name)]
            for g in self.groups
            if self.iteration % g.every
        }
        return {
            "optimizers": {name: o.state_dict() for name, o in self.optimizers.items()},
            "schedulers": {name: s.state_dict() for name, s in self.schedulers.items()},
            "updates": dict(self.updates),
            "iteration": self.iteration,
            "pending_gradients": pending,
            "grad_scaler": None if self.scaler is None else self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
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


def _rng_state() -> dict[str, Any]:
    """Every random stream, in types a ``weights_only`` load accepts."""
    numpy = np.random.get_state(legacy=False)
    numpy["state"] = {"key": numpy["state"]["key"].tolist(), "pos": int(numpy["state"]["pos"])}
    state = {"python": random.getstate(), "numpy": numpy, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy = dict(state["numpy"])
    numpy["state"] = {"key": np.asarray(numpy["state"]["key"], dtype=np.uint32), "pos": numpy["state"]["pos"]}
    np.random.set_state(numpy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def configure_models(method: Method, config: RunConfig, device: torch.device) -> None:
    """The run's precision, memory format and compilation, applied to every embedding model of the
    method (the frozen source too: it runs in the run's precision, in inference only)."""
    dtype = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[config.precision]
    for module in method.modules():
        if isinstance(module, (EmbeddingModel, PretrainedFeatures)):
            module.autocast_dtype = dtype
            if config.compile:
                module.compile()
    if config.channels_last:
        method.to(memory_format=torch.channels_last)
    if distributed.current().world > 1 and device.type == "cuda" and config.model.sync_batchnorm:
        for model in method.trainable().values():  # replaced in place, same parameter names: checkpoints unchanged
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]  # unannotated in torch


def check_run_options(config: RunConfig, device: torch.device, method: Method) -> None:
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


def default_callbacks(config: RunConfig, ranks: distributed.Ranks, interactive: bool) -> list[Callback]:
    """What ``train`` does around the steps, in this order at each hook (the epoch's checkpoint is
    written before log.csv, so a crash between them loses no epoch); only the first process writes files."""
    if not ranks.main:
        return []
    callbacks: list[Callback] = [ProgressBar()] if interactive else []
    callbacks += [EpochLine(), DataWaitHint()]
    if config.data.validation is not None and config.checkpoint.best is not None:
        callbacks.append(BestModel())  # before the checkpoint: see BestModel
    callbacks += [Checkpoints(config.checkpoint.every_steps), CsvLog(write_csv)]
    if config.logging.tensorboard:
        callbacks.append(TensorBoard())
    return callbacks + [FinalFiles()]


def split_training_data(config: RunConfig) -> tuple[RetrievalDataset, RetrievalDataset | None, RetrievalDataset | None]:
    """(training images, held-out images of the training classes or None, validation part or None) of a
    recipe's training split: what its runs train on and are evaluated on (``tune`` splits it once before
    any trial, so that a split every trial would refuse is refused at once)."""
    train_set = build_dataset(config.data, "train")
    holdout = validation = None
    if config.data.holdout_images > 0:
        train_set, holdout = split_holdout(train_set, config.data.holdout_images)
    if config.data.validation is not None:
        unit = METHODS[config.method].validation_unit(config)
        train_set, validation = split_validation(train_set, config.data.validation, unit)
    return train_set, holdout, validation


class Trainer:
    """One run: :meth:`setup` builds the method, data and optimisers; :meth:`resume` continues from the
    run's checkpoint; :meth:`fit` trains the remaining epochs, calling every callback's hooks; :meth:`step`
    is one training step. The position (``epoch``, ``done`` batches of it, the epoch's running ``totals``)
    and ``history`` are what a checkpoint stores beside the weights, optimisers and random streams.
    """

    def __init__(
        self,
        config: RunConfig,
        out: str | Path | None = None,
        *,
        ranks: distributed.Ranks | None = None,
        device_name: str | None = None,
        progress: bool | None = None,
        callbacks: list[Callback] | None = None,
    ) -> None:
        self.config = config
        self.out = None if out is None else Path(out)
        self.ranks = ranks or distributed.current()
        self.device_name = device_name or config.device
        self.interactive = self.ranks.main and (sys.stderr.isatty() if progress is None else progress)
        self.callbacks = default_callbacks(config, self.ranks, self.interactive) if callbacks is None else list(callbacks)
        self.history: list[dict[str, Any]] = []
        self.epoch, self.done = 0, 0
        self.totals: dict[str, float] = {}
        self.stop_requested = False
        self._stop: GracefulStop | None = None
        self.started = time.perf_counter()
        self.data_wait = 0.0  # seconds of this epoch spent waiting for the loader (in this process)

    # ------------------------------------------------------------------------------------------ setup

    def setup(self, train_set: Any = None) -> None:
        """Build everything the loop needs, in the order (and so with the random draws) of every earlier
        version. ``train_set`` stands in for the configured training data (benchmarks timing steps without
        it on disk): no evaluation set is built then."""
        config = self.config
        self.device = self._start_process()
        holdout = validation = None
        evaluated = train_set is None
        if evaluated:
            train_set, holdout, validation = split_training_data(config)
        labels = np.asarray(train_set.labels)
        # before any model is built (pretrained weights take minutes)
        by_class = METHODS[config.method].draws_by_class(config)
        if not by_class or (labels >= 0).all():
            check_batch_fits(config.data.classes_per_batch, config.data.images_per_class, labels, by_class)
        self.training_data = training_data_record(train_set, config.data)  # stored in every checkpoint
        self.method = self._new_method(train_set)
        # the test split is built here (its checks fail early) but, with validation data, read only after training
        self.eval_set = self.method.evaluation_set(config, holdout) if evaluated else None
        self.validation_set = None if validation is None else self.method.validation_set(config, validation)
        check_recall_ranks(config, {"test": self.eval_set, "validation": self.validation_set}, self.method)  # before any step
        say = print if self.ranks.main else None  # where the views are kept, once, at the first evaluation
        self.eval_set = keep_views(self.eval_set, config.eval.keep_views_gb, say, "test")
        self.validation_set = keep_views(self.validation_set, config.eval.keep_views_gb, say, "validation")
        self.method.prepare_training_set(train_set)
        self.method = self.method.to(self.device)
        configure_models(self.method, config, self.device)
        images = self._cached(train_set) if config.data.cache == "memory" else None
        self.loader, self.batches = build_train_loader(config, self.method, train_set, self.device, self.ranks, images)
        self.tails = cast(MultiViewDataset, self.loader.dataset).unfinished_tails()  # what prepare_batch finishes
        self.steps_per_epoch = len(self.batches.batches)
        # Start the float16 loss scale at 2**10, not PyTorch's 2**16: proxy losses (Proxy-Anchor, alpha = 32)
        # give parameter gradients near 25, so 2**16 overflowed and skipped the first 5 steps on an H100
        # (tests/test_gpu.py); the scaler still doubles it after 2,000 clean steps.
        scaler = torch.amp.GradScaler(self.device.type, init_scale=FLOAT16_INITIAL_SCALE, enabled=config.precision == "16")
        self.updater = Updater(self.method, config.optim, self.steps_per_epoch, scaler)

    def _start_process(self) -> torch.device:
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        if self.config.deterministic:
            make_deterministic()
        device = resolve_device(self.device_name)
        seed_everything(self.config.seed)
        return device

    def _cached(self, train_set: Any) -> MemoryCache:
        """The training images decoded once (``data.cache: memory``), said in one line."""
        started = time.perf_counter()
        data = self.config.data
        cache = memory_cache(train_set, self.method.train_image_size(data), data.num_workers, progress=self.interactive)
        if self.ranks.main:
            kept = f"{cache.nbytes() / 1e9:.2f} GB at a short side of at most {cache.short_side} px"
            print(
                f"training images cached in memory: {len(cache):,} ({kept}), decoded in {time.perf_counter() - started:.0f} s", flush=True
            )
        return cache

    def _new_method(self, train_set: Any) -> Method:
        config = self.config
        labels = np.asarray(train_set.labels)
        num_classes = int(labels.max()) + 1 if (labels >= 0).any() else 0
        method: Method = METHODS[config.method](config, num_classes)
        if method.uses_labels and (labels < 0).any():
            raise ConfigError(
                f"dataset {config.data.dataset!r} has no labels, and method {config.method!r} needs them; "
                "without labels use method: selfsup, or transfer with the relaxed contrastive loss alone (metric_weight 0)"
            )
        check_run_options(config, self.device, method)
        return method

    # ------------------------------------------------------------------------------------ checkpoints

    def resume(self) -> bool:
        """Continue from the newest readable checkpoint of the run folder (a damaged newest one falls back
        to an older kept one, which is copied to checkpoint.pt); False when there is none yet."""
        state = _resumable_state(self._folder(), self.config)
        if state is not None:
            self.load_state_dict(state)
        return state is not None

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: weights, optimisers, random streams, position and history (FORMAT_VERSION)."""
        config, method = self.config, self.method
        trainable = method.trainable()
        return {
            "format": FORMAT_VERSION,
            "version": __version__,
            "config": config_to_dict(config),
            "method": config.method,
            "output": method.output,
            "models": {name: m.state_dict() for name, m in trainable.items()},
            "architectures": {name: cast(Any, m).architecture() for name, m in trainable.items() if hasattr(m, "architecture")},
            "label_loss": None if method.label_loss is None else method.label_loss.state_dict(),
            **self.updater.state_dict(),
            "rng": _rng_state(),
            "epoch": self.epoch,  # epochs finished
            "step": self.updater.iteration,
            "position": {"epoch": self.epoch, "batches_done": self.done, "totals": dict(self.totals)},
            "history": self.history,
            TRAINING_DATA_KEY: self.training_data,  # which data the models saw: runs using them as a source check it
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Everything :meth:`state_dict` stores (checkpoints of earlier versions too), random streams included."""
        _load_training_state(state, self.method, self.updater)
        position = state["position"]
        self.history = state["history"]
        self.epoch, self.done, self.totals = position["epoch"], position["batches_done"], dict(position["totals"])

    def save_checkpoint(self) -> Path:
        return save_run_checkpoint(self.state_dict(), self._folder(), self.config.checkpoint.keep)

    def _folder(self) -> Path:
        if self.out is None:
            raise RuntimeError("this Trainer has no run folder (out): it cannot resume or save checkpoints")
        return self.out

    # ------------------------------------------------------------------------------------------- loop

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; SIGINT/SIGTERM end the run after the current step (the checkpoint
        callback saves it). Returns the results: final and best-epoch metrics and the history."""
        self._call("on_fit_start")
        with GracefulStop() as self._stop:
            while self.epoch < self.config.optim.epochs:
                epoch = self.epoch
                self._train_epoch()
                self._call("on_epoch_end", epoch, self.end_epoch(epoch))  # saves the checkpoint
                self._stop_if_asked()
            if self.validation_set is None:
                self.results = run_results(self.config, self.history)
            else:
                final_test, best = self.test_once()
                self._stop_if_asked()  # the final test is repeated when the run is resumed
                self.results = validated_results(self.config, self.history, final_test, best)
            self._call("on_fit_end", self.results)
            distributed.barrier()
        if self._stop.requested and self.out is not None:  # during the results: the run is finished, the report skipped
            raise ReportInterrupted(self._stop.signal_name, self.out)
        return self.results

    def _stop_if_asked(self, save: bool = False) -> None:
        """End the run here when a signal arrived on any process since the last step (during the last
        step's end, an evaluation or the final test): with ``save``, after writing the checkpoint (the
        epoch's evaluation is then skipped, and done when the run is resumed)."""
        assert self._stop is not None
        _, self.stop_requested = distributed.step_flags(True, self._stop.requested, self.device)
        if not self.stop_requested:
            return
        if save and self.ranks.main and self.out is not None:
            self.save_checkpoint()
        distributed.barrier()
        raise TrainingInterrupted(self._stop.signal_name or "SIGTERM", self.updater.iteration, self._folder() / CHECKPOINT_NAME)

    def _train_epoch(self) -> None:
        self.start_epoch()
        self._call("on_epoch_start", self.epoch)
        for batch in self._waited_for(self.loader):
            logs = self.step(batch)
            self._call("on_step_end", self.updater.iteration, logs)
            if self.stop_requested:
                assert self._stop is not None  # fit() runs the epochs inside GracefulStop
                raise TrainingInterrupted(self._stop.signal_name, self.updater.iteration, self._folder() / CHECKPOINT_NAME)
        self._stop_if_asked(save=True)  # a signal during the epoch's last step: no evaluation before stopping

    def _waited_for(self, loader: DataLoader[Any]) -> Any:
        """The loader's batches; the time spent waiting for each is added to ``data_wait`` (seconds). A
        step ends in a device synchronisation (the finite-loss check), so this is time the device sat idle."""
        batches = iter(loader)
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                return
            self.data_wait += time.perf_counter() - asked
            yield batch

    def test_once(self) -> tuple[dict[str, float], dict[str, Any] | None]:
        """After training with validation data: the test split's metrics of the final model and the
        record of the best-by-validation one, whose test metrics are evaluated here too (the same ones
        when the best epoch is the last). The only place such a run reads the test split."""
        config = self.config
        if self.eval_set is None:
            raise RuntimeError("no test set: this Trainer was set up with a training set of its own")
        key = selection_key(config, self.method.output, self.history)
        row = None if config.checkpoint.best is None else best_row(self.history, key)
        record = None if row is None else {"epoch": row["epoch"], "metric": key, "validation": metrics_of(row)}
        if not config.eval.test:  # eval.test: false (a tuning trial): the test split is not read at all
            return {}, record
        final = self.method.evaluate(self.eval_set, config, self.device, progress=self.interactive)
        if row is None or record is None:
            return final, None
        if row["epoch"] == self.history[-1]["epoch"]:
            record["test"] = final
            return final, record
        distributed.barrier()  # the first process wrote best.pt
        best = load_checkpoint(self._folder() / BEST_NAME)
        if best["epoch"] != row["epoch"]:
            found = f"{self._folder() / BEST_NAME} holds epoch {best['epoch']}"
            raise CheckpointError(f"{found}, but the history's best is epoch {row['epoch']}")
        trainable = self.method.trainable()
        final_weights = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in trainable.items()}
        for name, model in trainable.items():
            model.load_state_dict(best["models"][name])
        try:
            record["test"] = self.method.evaluate(self.eval_set, config, self.device, progress=self.interactive)
        finally:
            for name, model in trainable.items():
                model.load_state_dict(final_weights[name])
        return final, record

    def save_best(self, key: str, row: dict[str, Any]) -> Path:
        """``best.pt``: the weights of the epoch of ``row`` (just ended), as a checkpoint that
        load_embedding_model reads, with the validation metric it was chosen by."""
        state = self.state_dict()
        kept = ("format", "version", "config", "method", "output", "models", "architectures", TRAINING_DATA_KEY)
        chosen = {"metric": key, "value": row[key], "on": "validation"}
        best = {**{k: state[k] for k in kept}, "epoch": row["epoch"], "selected_by": chosen}
        path = self._folder() / BEST_NAME
        save_checkpoint(best, path)
        return path

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def start_epoch(self) -> None:
        """Training mode, the loader at the epoch's position (``done`` batches in when resumed), the clock."""
        self.method.train()
        self.batches.start(self.epoch, self.done)
        self.started = time.perf_counter()
        self.data_wait = 0.0

    def step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> dict[str, float]:
        """One training step on a loader batch ``(views, labels, indices)``; returns the loss's logged parts."""
        self.totals["skipped_images"] = self.totals.get("skipped_images", 0) + self.batches.part - len(batch[1])
        return self.update(*self.prepare_batch(batch))

    def prepare_batch(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A loader batch as the method takes it: images, labels and indices per view, on the device. The
        loader's uint8 views are converted and normalised there; float views (made elsewhere) pass as they are."""
        views, labels, indices = batch
        indices = indices.repeat_interleave(views.shape[1])
        views = views.to(self.device, non_blocking=views.is_pinned())
        if self.tails is not None and views.dtype == torch.uint8:  # the loader's uint8: finished here, on the device
            views = finish_views(views, self.tails, self.config.data.views)
        images, labels = flatten_views(views, labels)
        layout = torch.channels_last if self.config.channels_last else torch.contiguous_format
        return images.contiguous(memory_format=layout), labels.to(self.device), indices.to(self.device)

    def update(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> dict[str, float]:
        """Loss, backward and optimiser update on a prepared batch. A non-finite loss (on any process)
        raises or, with ``optim.on_nan: skip``, is counted and not back-propagated."""
        loss, logs = self.method.training_loss(images, labels, indices)
        asked = self._stop is not None and self._stop.requested
        finite, self.stop_requested = distributed.step_flags(bool(torch.isfinite(loss)), asked, self.device)
        if not finite:
            if self.config.optim.on_nan == "error":
                step = self.updater.iteration + 1
                raise TrainingDivergedError(_non_finite_message(self.epoch, self.done, step, logs, self.out))
            self.totals["skipped_steps"] = self.totals.get("skipped_steps", 0) + 1
        else:
            self.updater.backward(loss)
            for key, value in logs.items():
                self.totals[key] = self.totals.get(key, 0.0) + value
        self.updater.step()
        self.done += 1
        return logs

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        """The epoch's log row (means of the logged losses, the method's evaluation when due), appended to
        the history; the position moves on to the next epoch."""
        config = self.config
        row = self._train_row(epoch)
        if epoch + 1 == config.optim.epochs or (config.eval.every and (epoch + 1) % config.eval.every == 0):
            evaluated_set = self.validation_set if self.validation_set is not None else self.eval_set
            if evaluated_set is None:
                raise RuntimeError("no evaluation set: this Trainer was set up with a training set of its own")
            started = time.perf_counter()
            row.update(self.method.evaluate(evaluated_set, config, self.device, progress=self.interactive))
            row["eval_seconds"] = round(time.perf_counter() - started, 2)
            if self.validation_set is not None:
                row["evaluated_on"] = "validation"
        self.history.append(row)
        self.epoch, self.done, self.totals = epoch + 1, 0, {}
        return row

    def _train_row(self, epoch: int) -> dict[str, Any]:
        totals, updater = self.totals, self.updater
        row: dict[str, Any] = {"epoch": epoch + 1, "step": updater.iteration, "lr": updater.lr()}
        if len(updater.groups) > 1:
            row.update({f"{name}/updates": count for name, count in updater.updates.items()})
        steps_counted = max(1, self.steps_per_epoch - totals.get("skipped_steps", 0))
        row.update({k: v / steps_counted for k, v in totals.items() if k not in ("skipped_images", "skipped_steps")})
        seconds = time.perf_counter() - self.started
        row["train_seconds"] = round(seconds, 2)
        row["data_wait"] = round(self.data_wait / seconds, 4) if seconds > 0 else 0.0  # share of the epoch's training time
        if self.config.data.skip_bad_images:
            row["skipped_images"] = int(totals.get("skipped_images", 0))
        if self.config.optim.on_nan == "skip":
            row["skipped_steps"] = int(totals.get("skipped_steps", 0))
        return row


def train(
    config: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool | None = None,
    overwrite: bool = False,
    extra_callbacks: list[Callback] | None = None,
    report: Callable[[Path], object] | None = None,
) -> dict[str, Any]:
    """Train one run into ``out_dir``; returns the results written to ``results.json``.

    Every epoch ends with an evaluation (``eval.every``: of the test split, or with ``data.validation`` of
    the validation data, the test split then evaluated once after training), a CSV log row and an
    atomically written checkpoint (also every ``checkpoint.every_steps`` steps, and when SIGINT or
    SIGTERM arrives), so ``resume=True`` continues from the last checkpoint, in the middle of an epoch
    if need be, and in deterministic mode ends with the same weights as an uninterrupted run.
    A folder that holds another run is refused unless ``overwrite``, and one holding anything else always
    (see :func:`~metrictransfer.engine.run_folder.claim_run_folder`); the folder is locked while the run
    trains and, with ``report`` (a function of the run folder, e.g. :func:`metrictransfer.report.write_report`),
    until that has written the report too. Under torchrun every process runs
    this; only the first writes files and holds the lock.
    ``extra_callbacks`` run after the default ones at every hook (a tuner's pruning, say).
    """
    out = Path(out_dir)
    ranks, device_name = distributed.setup(config.device)
    created = not out.exists()
    lock = claim_run_folder(out, resume, overwrite) if ranks.main else None
    failed = True
    try:
        results = _train(config, out, resume, progress, ranks, device_name, extra_callbacks or [], lock)
        if report is not None and lock is not None:
            if lock.manifest is not None:
                lock.manifest.record_present()  # the results the report reads back are checked against this
            _write_report(report, out)
        failed = False
        return results
    finally:
        if lock is not None:
            if lock.manifest is not None and out.is_dir():
                lock.manifest.record_present(after_failure=failed)  # before the lock goes: what this run wrote, with digests
            lock.release()
            if failed and created:
                remove_if_unused(out)  # a start that failed (bad data, Ctrl-C) leaves no empty run folder


def _write_report(report: Callable[[Path], object], out: Path) -> None:
    """The report of a finished run; an interruption leaves the run as it is and says how to rebuild it."""
    try:
        report(out)
    except KeyboardInterrupt:
        raise ReportInterrupted("SIGINT", out) from None


def _train(
    config: RunConfig,
    out: Path,
    resume: bool,
    progress: bool | None,
    ranks: distributed.Ranks,
    device_name: str,
    extra_callbacks: list[Callback],
    lock: RunLock | None = None,
) -> dict[str, Any]:
    trainer = Trainer(config, out, ranks=ranks, device_name=device_name, progress=progress)
    trainer.callbacks += extra_callbacks
    trainer.setup()
    if resume:
        trainer.resume()
    if ranks.main:
        save_config(config, out / "config.yaml")
        if lock is not None and lock.manifest is not None:
            lock.manifest.record("config.yaml")
    return trainer.fit()


def _resumable_state(out: Path, config: RunConfig) -> dict[str, Any] | None:
    """The newest readable checkpoint of ``out``, refused when another version or configuration wrote it."""
    found = _newest_readable(out)
    if found is None:
        return None
    file, state = found
    if state.get("version") != __version__:
        raise CheckpointError(
            f"cannot resume {out}: {file} was written by metrictransfer {state.get('version')}, this is {__version__}; "
            "resume it with that version (pip install metrictransfer==VERSION)"
        )
    changed = resume_differences(state["config"], config_to_dict(config))
    if changed:
        raise ConfigError(f"cannot resume {out}: the configuration differs from the one the run started with: " + "; ".join(changed))
    return state


def _newest_readable(out: Path) -> tuple[Path, dict[str, Any]] | None:
    """(file, state) of the newest checkpoint that loads; a damaged newer one is reported, and the one
    loaded is copied to checkpoint.pt, so that evaluate, export and index work again."""
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
        if file != latest:
            atomic_copy(file, latest)
        print(f"warning: resuming from {file} (copied to {latest}); newer checkpoints are damaged: {'; '.join(damaged)}", file=sys.stderr)
    return file, state


def _load_training_state(state: dict[str, Any], method: Method, updater: Updater) -> None:
    for name, model in method.trainable().items():
        model.load_state_dict(state["models"][name])
    if method.label_loss is not None:
        method.label_loss.load_state_dict(state["label_loss"])
    updater.load_state_dict(state)
    _set_rng_state(state["rng"])


def _non_finite_message(epoch: int, batch: int, step: int, logs: dict[str, float], out: Path | None) -> str:
    terms = ", ".join(f"{k} {v:.4g}" for k, v in logs.items())
    kept = None if out is None else out / "checkpoint.pt"
    last = f"the last good checkpoint is {kept}" if kept is not None and kept.is_file() else "no checkpoint was written yet"
    return (
        f"non-finite loss at step {step} (epoch {epoch + 1}, batch {batch + 1}): {terms}; {last}. "
        "Lower optim.lr or set optim.grad_clip, check the data, or skip such steps with --on-nan skip"
    )
