"""Diversified mutual metric learning: a cohort of K embedding models that teach each other.

Member k minimises its base metric loss plus λ × the mutual loss towards every other member, whose
embeddings are detached (a member's mutual loss never sends gradient to its peers). Three diversities
make the members different (DESIGN.md 1.2):

- model: member k is initialised from ``seed + k`` (``mutual.model_diversity``), optionally with its own
  backbone or backbone weights (``mutual.backbones`` / ``mutual.weights``);
- temporal: member k steps its own optimiser every τ_k iterations (``mutual.update_every``), or the last
  member is an exponential moving average of member 0 (``mutual.ema_momentum``);
- view: each member gets its own augmentation of the same images in the same order
  (``mutual.view_diversity``, ``mutual.augmentation_strength``), so relations between samples line up.

The images are decoded once for the whole cohort; the trainer hands the method every member's views.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Literal, cast

import torch
from pydantic import Field, model_validator
from torch import nn

from metrictransfer.config import Component, DataConfig, RunConfig, Strict, check_component
from metrictransfer.data.protocol import RetrievalDataset
from metrictransfer.data.transforms import build_transform
from metrictransfer.losses import TransferInputs, TransferLoss, TransferShapes
from metrictransfer.methods.base import Method, UpdateGroup, build_label_loss, build_model, label_loss_groups
from metrictransfer.methods.teaching import build_losses, capturing, needs_of, setup_items
from metrictransfer.models import EmbeddingModel
from metrictransfer.models.features import FeatureTaps, feature_shapes, last_stages
from metrictransfer.registry import TRANSFER_LOSSES, register_method
from metrictransfer.runtime.distributed import gather

# The paper's ablation of the diversities, as settings of the ``mutual`` section for a cohort of two: each
# row switches one diversity on (recipes/mutual/ and benchmarks/mutual_ablation.py are built from it).
NO_DIVERSITY = {"model_diversity": False, "update_every": [1, 1], "view_diversity": False}
ABLATION = {
    "independent": {"weight": 0.0, **NO_DIVERSITY, "model_diversity": True},  # λ = 0: no mutual loss at all
    "no_diversity": NO_DIVERSITY,
    "model": {**NO_DIVERSITY, "model_diversity": True},
    "temporal": {**NO_DIVERSITY, "update_every": [1, 2]},
    "view": {**NO_DIVERSITY, "view_diversity": True},
    "all": {"model_diversity": True, "update_every": [1, 2], "view_diversity": True},
}


def member_name(k: int) -> str:
    return f"member{k}"


class MutualConfig(Strict):
    """method: mutual — a cohort of embedding models that teach each other (DESIGN.md 1.2).

    The paper's text beyond its abstract is not available: every choice it does not state is an option
    here, with the default named in the README.
    """

    members: int = Field(2, ge=1, description="cohort size K (1 is plain training, kept for checks)")
    loss: Component = Field(
        default_factory=lambda: Component(name="rkd"), description="the mutual loss: any transfer loss (the peer plays the source)"
    )
    weight: float = Field(1.0, ge=0, description="λ: weight of the mutual loss (0: independent members)")
    peers: Literal["mean", "sum"] = Field("mean", description="how the K-1 peers' mutual losses combine")
    model_diversity: bool = Field(True, description="member k initialised from seed + k (else all from seed)")
    update_every: list[int] | None = Field(None, description="τ_k: member k steps its optimiser every τ_k iterations (default 1, 2, …, K)")
    ema_momentum: float | None = Field(None, gt=0, lt=1, description="the last member is an exponential moving average of member 0 instead")
    view_diversity: bool = Field(True, description="each member its own augmentation of the same images")
    hint_stages: int = Field(1, ge=1, description="fitnet/attention as the mutual loss: the backbones' last N stages")
    augmentation_strength: list[float] | None = Field(None, description="per member (default 1.0 each)")
    backbones: list[str] | None = Field(None, description="per member (default: model.backbone for all)")
    weights: list[str | None] | None = Field(None, description="per member backbone weights files (default: model.weights)")

    @model_validator(mode="after")
    def _per_member(self) -> "MutualConfig":
        check_component(self.loss, TRANSFER_LOSSES, "mutual loss", "mutual.loss")
        for key in ("update_every", "augmentation_strength", "backbones", "weights"):
            value = getattr(self, key)
            if value is not None and len(value) != self.members:
                raise ValueError(f"mutual.{key} needs one entry per member ({self.members}), got {len(value)}: {value}")
        if self.update_every is not None and any(t < 1 for t in self.update_every):
            raise ValueError(f"mutual.update_every entries must be >= 1, got {self.update_every}")
        if self.augmentation_strength is not None and any(s < 0 for s in self.augmentation_strength):
            raise ValueError(f"mutual.augmentation_strength entries must be >= 0, got {self.augmentation_strength}")
        if self.ema_momentum is not None:
            if self.members < 2:
                raise ValueError("mutual.ema_momentum needs at least 2 members (the last one is the average of member 0)")
            if self.backbones is not None and self.backbones[-1] != self.backbones[0]:
                raise ValueError(f"the EMA member averages member 0, so it needs the same backbone: {self.backbones}")
        return self

    def taus(self) -> list[int]:
        return list(self.update_every) if self.update_every is not None else list(range(1, self.members + 1))

    def strengths(self) -> list[float]:
        return list(self.augmentation_strength) if self.augmentation_strength is not None else [1.0] * self.members


# The mutual method's base loss unless metric_loss is given: a conventional triplet loss, margin 0.2 on
# L2-normalised embeddings, distance-weighted sampling (the diversified mutual learning authors' setting).
MUTUAL_METRIC_LOSS = {"name": "triplet", "params": {"margin": 0.2}, "miner": {"name": "distance_weighted"}}


@register_method("mutual")
class MutualMethod(Method):
    output = "member0"
    params_model = MutualConfig
    recipe_defaults: ClassVar[dict[str, Any]] = {"metric_loss": MUTUAL_METRIC_LOSS}

    @classmethod
    def check_config(cls, config: RunConfig) -> None:
        if not config.model.normalize and config.metric_loss.name == "triplet":
            raise ValueError("method 'mutual' with the triplet base loss expects L2-normalised embeddings: set model.normalize: true")

    @classmethod
    def backbones(cls, config: RunConfig) -> list[str]:
        """Every member's backbone (they share their input views, so their input convention too)."""
        return config.section(MutualConfig).backbones or [config.model.backbone]

    def __init__(self, config: RunConfig, num_classes: int) -> None:
        super().__init__()
        cfg = config.section(MutualConfig)
        self.size = cfg.members
        self.views_per_member = config.data.views
        self.weight = cfg.weight
        self.peer_mean = cfg.peers == "mean"
        self.taus = cfg.taus()
        self.strengths = cfg.strengths()
        self.view_diversity = cfg.view_diversity and self.size > 1
        self.ema_momentum = cfg.ema_momentum
        self.ema_member = self.size - 1 if cfg.ema_momentum is not None else None
        self.proxy_lr_multiplier = config.metric_loss.proxy_lr_multiplier

        self.members = nn.ModuleList()
        label_losses: list[nn.Module | None] = []
        for k in range(self.size):
            # Seeding right before each member is built makes member k's initial weights depend on its seed
            # alone; with one member this is exactly what method 'source' builds.
            torch.manual_seed(config.seed + k if cfg.model_diversity else config.seed)
            model_config = config.model.model_copy(
                update={
                    "backbone": cfg.backbones[k] if cfg.backbones else config.model.backbone,
                    "weights": cfg.weights[k] if cfg.weights else config.model.weights,
                }
            )
            self.members.append(build_model(model_config))
            label_losses.append(
                None if k == self.ema_member else build_label_loss(config.metric_loss, num_classes, config.model.embedding_dim)
            )
        self.label_losses = nn.ModuleList(loss if loss is not None else nn.Identity() for loss in label_losses)
        self.label_loss = self.label_losses  # checkpointed (proxies) by the trainer
        if self.ema_member is not None:
            ema = self.members[self.ema_member]
            ema.load_state_dict(self.members[0].state_dict())
            ema.requires_grad_(False)

        # One mutual loss per ordered pair (learner k, peer j): losses with parameters (FitNet's regressors,
        # CRD's heads and memory banks) must not be shared between pairs.
        self.pairs = [(k, j) for k in self.learners() for j in range(self.size) if j != k]
        losses = build_losses([(cfg.loss.name, cfg.loss.params)] * len(self.pairs), "mutual.loss.params", {"features", "indices", "labels"})
        self.mutual_losses = nn.ModuleDict({f"{k}_{j}": loss for (k, j), loss in zip(self.pairs, losses)})
        self.uses_features = "features" in needs_of(losses)
        self.taps: list[FeatureTaps] = []
        channels: list[list[int] | None] = [None] * self.size
        if self.uses_features:
            layers = [last_stages(m, cfg.hint_stages) for m in self.members]
            channels = [[s[0] for s in feature_shapes(m, names, config.data.image_size)] for m, names in zip(self.members, layers)]
            self.taps = [FeatureTaps(m, names) for m, names in zip(self.members, layers)]
        for (k, j), loss in zip(self.pairs, losses):
            loss.setup(TransferShapes(self._member(k).embedding_dim, self._member(j).embedding_dim, channels[k], channels[j]))

    def _member(self, k: int) -> EmbeddingModel:
        return cast(EmbeddingModel, self.members[k])

    @classmethod
    def label(cls, config: RunConfig) -> str:
        """Cohorts by their size, base and mutual loss, and diversities."""
        m = config.section(MutualConfig)
        diversities = [
            name
            for name, on in (
                ("model", m.model_diversity),
                ("temporal", any(t > 1 for t in m.taus()) or m.ema_momentum is not None),
                ("view", m.view_diversity),
            )
            if on
        ]
        return f"mutual K={m.members} {config.metric_loss.name} + {m.weight:g}·{m.loss.name} ({' + '.join(diversities) or 'no'} diversity)"

    def learners(self) -> list[int]:
        """Members trained by gradient (all but an EMA member)."""
        return [k for k in range(self.size) if k != self.ema_member]

    def prepare_training_set(self, dataset: RetrievalDataset) -> None:
        setup_items(cast(list[TransferLoss], list(self.mutual_losses.values())), len(dataset))

    def train_transforms(self, data: DataConfig) -> list[Callable[..., Any]]:
        strengths = self.strengths if self.view_diversity else self.strengths[:1]
        return [build_transform(data.transform, True, data.image_size, data.normalization, s) for s in strengths]

    def trainable(self) -> dict[str, nn.Module]:
        modules: dict[str, nn.Module] = {member_name(k): m for k, m in enumerate(self.members)}
        if any(True for _ in self.mutual_losses.parameters()):
            modules["mutual_losses"] = self.mutual_losses
        return modules

    def evaluation_models(self) -> dict[str, nn.Module]:
        return {member_name(k): m for k, m in enumerate(self.members)}

    def _member_params(self, k: int, lr: float) -> list[dict[str, Any]]:
        params = list(self.members[k].parameters())
        params += [p for key, loss in self.mutual_losses.items() if key.startswith(f"{k}_") for p in loss.parameters()]
        return [{"params": params, "lr": lr}, *label_loss_groups(self.label_losses[k], lr, self.proxy_lr_multiplier)]

    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        return [group for k in self.learners() for group in self._member_params(k, lr)]

    def update_groups(self, lr: float) -> list[UpdateGroup]:
        return [UpdateGroup(member_name(k), self._member_params(k, lr), self.taus[k]) for k in self.learners()]

    @torch.no_grad()
    def after_update(self, group: str) -> None:
        if self.ema_member is None or self.ema_momentum is None or group != member_name(0):  # both set, or neither
            return
        ema, online = self.members[self.ema_member], self.members[0]
        for p_ema, p in zip(ema.parameters(), online.parameters()):
            p_ema.lerp_(p, 1.0 - self.ema_momentum)
        for b_ema, b in zip(ema.buffers(), online.buffers()):
            b_ema.copy_(b)  # batch-norm statistics follow the online member

    def split_views(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """The flattened batch (image, member view, view) → one tensor per member, in image order.

        Without view diversity every member gets the same views (the same tensor)."""
        streams = self.size if self.view_diversity else 1
        views = self.views_per_member
        grouped = tensor.unflatten(0, (-1, streams, views))  # type: ignore[no-untyped-call]  # torch leaves Tensor.unflatten unannotated
        return [grouped[:, k if self.view_diversity else 0].flatten(0, 1) for k in range(self.size)]

    def member_losses(
        self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None
    ) -> dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per learning member k: (its loss, base metric loss, mutual loss), peers' outputs detached."""
        inputs = self.split_views(images)
        member_labels = self.split_views(labels)[0]
        member_indices = self.split_views(indices)[0] if indices is not None else None
        with capturing(self.taps):
            embeddings: list[torch.Tensor] = []
            features: list[list[torch.Tensor] | None] = []
            for k, (member, x) in enumerate(zip(self.members, inputs)):
                if k == self.ema_member:
                    with torch.no_grad():
                        embeddings.append(member(x))
                else:
                    embeddings.append(member(x))
                features.append(self.taps[k].features if self.uses_features else None)
            # Pairwise losses see the global batch (hint losses stay on this process's feature maps).
            embeddings = [gather(e) for e in embeddings]
            member_labels, member_indices = gather(member_labels), gather(member_indices)

            losses: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
            for k in self.learners():
                base = self.label_losses[k](embeddings[k], member_labels)
                mutual = embeddings[k].new_zeros(())
                peers = [j for j in range(self.size) if j != k]
                for j in peers:  # the peer teaches: its outputs are constants to learner k's loss
                    peer = features[j]
                    peer_features = [f.detach() for f in peer] if peer is not None else None
                    inputs_kj = TransferInputs(
                        embeddings[k], embeddings[j].detach(), features[k], peer_features, indices=member_indices, labels=member_labels
                    )
                    mutual = mutual + cast(TransferLoss, self.mutual_losses[f"{k}_{j}"]).compute(inputs_kj)
                if peers and self.peer_mean:
                    mutual = mutual / len(peers)
                losses[k] = (base + self.weight * mutual, base, mutual)
        return losses

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        losses = self.member_losses(images, labels, indices)
        # Member k's gradients accumulate over τ_k iterations before its optimiser steps: dividing by τ_k
        # makes one update follow the mean gradient of its τ_k batches.
        total = cast(torch.Tensor, sum(loss / self.taus[k] for k, (loss, _, _) in losses.items()))  # at least one learner
        logs: dict[str, float] = {"loss": sum(loss.item() for loss, _, _ in losses.values())}
        for k, (_, base, mutual) in losses.items():
            logs[f"{member_name(k)}/metric_loss"] = base.item()
            logs[f"{member_name(k)}/mutual_loss"] = mutual.item()
        return total, logs
