"""A source model trained without labels: SimCLR-style contrastive learning between the views of each image."""

from __future__ import annotations

import torch
from pydantic import Field
from pytorch_metric_learning.losses import NTXentLoss

from metrictransfer.config import RunConfig, Strict
from metrictransfer.errors import ConfigError
from metrictransfer.methods.base import SingleModelMethod, build_model
from metrictransfer.registry import register_method
from metrictransfer.runtime.distributed import gather


class SelfSupConfig(Strict):
    temperature: float = Field(0.1, gt=0, description="NT-Xent temperature of method: selfsup")


@register_method("selfsup")
class SelfSupervisedMethod(SingleModelMethod):
    """NT-Xent (normalised temperature-scaled cross entropy, pytorch-metric-learning's) where the views of
    one image are the positives and every other image in the batch a negative. Labels are never read;
    the image index is the "class". No projection head: the embedding itself is trained and evaluated.
    """

    output = "model"
    uses_labels = False
    params_model = SelfSupConfig

    def __init__(self, config: RunConfig, num_classes: int) -> None:
        super().__init__()
        if config.data.views < 2:
            raise ConfigError("method 'selfsup' contrasts views of the same image: set data.views >= 2")
        self.model = build_model(config.model)
        self.contrastive = NTXentLoss(temperature=config.section(SelfSupConfig).temperature)

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if indices is None:
            raise ValueError("self-supervised training needs each image's index to pair its views")
        loss = self.contrastive(gather(self.model(images)), gather(indices))  # negatives from the global batch
        return loss, {"loss": loss.item()}
