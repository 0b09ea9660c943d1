"""What the training loop needs from a training strategy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

import torch
from pydantic import BaseModel
from torch import nn

from metrictransfer.config import DataConfig, MetricLossConfig, ModelConfig, RunConfig
from metrictransfer.data.protocol import RetrievalDataset
from metrictransfer.data.transforms import build_transform
from metrictransfer.evaluation.evaluate import evaluate_models, test_dataset, with_test_transform
from metrictransfer.losses import MinedMetricLoss, build_metric_loss, build_miner
from metrictransfer.methods.teaching import ModuleT, frozen
from metrictransfer.models import EmbeddingModel


@dataclass
class UpdateGroup:
    """Parameters that one optimiser updates every ``every`` training iterations (gradients accumulate
    in between); its learning-rate schedule counts its own updates."""

    name: str
    params: list[dict[str, Any]]
    every: int = 1


class Method(nn.Module):
    """A training strategy: owns its models and losses, computes one step's loss.

    ``trainable`` holds the models the optimiser updates and checkpoints store; ``output`` names the one
    that is the run's result (evaluated every epoch, loaded by ``evaluate`` and by later transfers).
    """

    output: str = "model"
    uses_labels: bool = True  # False: batches are drawn without looking at labels (unlabelled data works)
    reports_recall: bool = True  # False: evaluate() reports no Recall@K, so eval.recall_at is not checked
    #: The method's own settings: a pydantic model of the recipe section named after the method
    #: (``transfer:``), validated when the recipe loads; read with ``config.section(params_model)``.
    params_model: ClassVar[type[BaseModel] | None] = None
    #: Top-level sections a recipe of this method leaves out default to these (mutual: its base loss).
    recipe_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.label_loss: nn.Module | None = None  # a loss with state (proxies) is checkpointed too

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        """Checks across sections, when the recipe loads (raise ValueError naming the keys); none here."""

    @classmethod
    def backbones(cls, config: RunConfig) -> list[str]:
        """The backbones of the models fed the training images (their input convention must agree)."""
        return [config.model.backbone]

    @classmethod
    def draws_by_class(cls, config: RunConfig) -> bool:
        """Whether training batches are drawn class-balanced (:attr:`uses_labels`), read from the
        configuration alone, so that a batch the data cannot fill is refused before any model is built."""
        return cls.uses_labels

    @classmethod
    def label(cls, config: RunConfig) -> str:
        """How tables name a run of this method (the paper's tables name the loss)."""
        return f"{config.metric_loss.name} (no transfer)"

    def freeze(self, model: ModuleT) -> ModuleT:
        """Make ``model`` a frozen teacher of this method: no gradient, and in eval mode even while the
        method trains (its batch-norm statistics never move)."""
        self.__dict__.setdefault("_frozen", []).append(model)  # a plain list: not registered a second time
        return frozen(model)

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        for model in self.__dict__.get("_frozen", []):
            model.eval()
        return self

    def trainable(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        raise NotImplementedError

    def update_groups(self, lr: float) -> list[UpdateGroup]:
        """One optimiser per group; a single group stepping every iteration unless a method needs more."""
        return [UpdateGroup("model", self.parameter_groups(lr), 1)]

    def after_update(self, group: str) -> None:
        """Called after group ``group``'s optimiser stepped (moving averages follow their model here)."""

    def train_transforms(self, data: DataConfig) -> list[Callable[..., Any]]:
        """The training augmentations: each makes ``data.views`` views of every image (several: cohorts)."""
        return [build_transform(data.transform, True, data.image_size, data.normalization)]

    def train_image_size(self, data: DataConfig) -> int:
        """The side of the largest training view the method makes (what a decoded-image cache must keep)."""
        return data.image_size

    def evaluation_models(self) -> dict[str, nn.Module]:
        """The models evaluated every epoch; more than one are also evaluated as an ensemble."""
        return {self.output: self.output_model()}

    def evaluation_set(self, config: RunConfig, holdout: RetrievalDataset | None) -> RetrievalDataset:
        """The images :meth:`evaluate` is given: the test split (``eval.data`` when set). ``holdout``: the
        training classes' held-out images (``data.holdout_images``), or None."""
        return test_dataset(config)

    @classmethod
    def validation_unit(cls, config: RunConfig) -> Literal["classes", "images"]:
        """What ``data.validation`` holds out of the training split: whole classes for a retrieval model,
        tested on unseen classes (a classifier, tested on its own classes, holds out images)."""
        return "classes"

    def validation_set(self, config: RunConfig, part: RetrievalDataset) -> RetrievalDataset:
        """The validation part of the training split as :meth:`evaluate` takes it (the test preprocessing)."""
        return with_test_transform(part, config.data)

    def evaluate(self, dataset: RetrievalDataset, config: RunConfig, device: torch.device, progress: bool = False) -> dict[str, float]:
        """The metrics of the epochs that are evaluated, in log-row order: retrieval metrics of
        :meth:`evaluation_models` (a cohort's ensemble too)."""
        return evaluate_models(self.evaluation_models(), dataset, config, device, progress=progress)

    def prepare_training_set(self, dataset: RetrievalDataset) -> None:
        """Shown the training set before training: for per-image state (CRD's memory banks, precomputed
        source embeddings), indexed by the positions training steps pass as ``indices``."""

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One step's loss and its logged parts; ``indices`` are the images' positions in the training set."""
        raise NotImplementedError

    def output_model(self) -> nn.Module:
        return self.trainable()[self.output]


class SingleModelMethod(Method):
    """A method that trains one model, ``self.model``, with every parameter at the base learning rate."""

    model: nn.Module

    def trainable(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        return [{"params": list(self.model.parameters()), "lr": lr}]


def build_model(config: ModelConfig) -> EmbeddingModel:
    return EmbeddingModel(
        config.backbone,
        config.embedding_dim,
        config.pretrained,
        config.weights,
        config.normalize,
        freeze_batchnorm=config.freeze_batchnorm,
    )


def build_label_loss(config: MetricLossConfig, num_classes: int, embedding_dim: int) -> MinedMetricLoss:
    loss = build_metric_loss(config.name, num_classes, embedding_dim, **config.params)
    return MinedMetricLoss(loss, build_miner(config.miner.name, **config.miner.params))


def label_loss_groups(loss: nn.Module, lr: float, multiplier: float) -> list[dict[str, Any]]:
    """Learnable loss parameters (Proxy-Anchor's proxies) train at ``multiplier`` × the model's rate."""
    params = [p for p in loss.parameters() if p.requires_grad]
    return [{"params": params, "lr": lr * multiplier, "weight_decay": 0.0}] if params else []
