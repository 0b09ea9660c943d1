"""``metrictransfer distill``: the recipe of the common case, a pretrained model distilled into a small
embedding model on the user's own images, without labels.

The recipe is an ordinary one (a ``method: transfer`` run with a timm source and a label-free transfer
loss, :data:`DEFAULT_LOSS` unless ``--loss`` names another), stored as the run's ``config.yaml``:
``evaluate``, ``export``, ``index``, ``search``, ``report`` and ``train --resume`` treat the result like
any other run.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metrictransfer.errors import MissingFileError

if TYPE_CHECKING:  # the command line reads this module's defaults for --help, before any heavy import
    from metrictransfer.config import RunConfig

#: Defaults of the recipe, chosen for photos and a few thousand images (each one a flag of the command).
DEFAULT_EPOCHS = 30
DEFAULT_BATCH = 64
DEFAULT_IMAGE_SIZE = 224
DEFAULT_LR = 1e-4
#: The transfer loss (any registered one that needs no labels works, e.g. relaxed_contrastive, relaxed_ms,
#: proj_cosine, rkd): the one that led the foundation-style benchmark with every loss tuned alike
#: (benchmarks/results/foundation_distill_tuned.md; the guide "Which transfer should I use?").
DEFAULT_LOSS = "queue_distill"
#: The measured figure behind DEFAULT_LOSS, for --help.
LOSS_EVIDENCE = (
    "it led a foundation-style benchmark with every loss tuned alike, 62.4 ± 1.0 R@1 against 56.3 ± 2.6 for relaxed_ms "
    "and 53.9 ± 2.2 for relaxed_contrastive"
)
#: Share of the images held out, without labels, to report agreement with the source every epoch.
AGREEMENT_HOLDOUT = 0.1
#: The recipe keys that the command's own options set: its messages name the options (errors.command_options).
OPTIONS = {
    "transfer.source.weights": "--source-weights",
    "transfer.loss": "--loss",
    "model.weights": "--target-weights",
    "data.classes_per_batch": "--batch-size",
}


def data_section(path: str | Path, image_size: int, what: str) -> dict[str, Any]:
    """A folder (every image under it, sub-folders or not; no labels read) or a CSV list (its train
    split for training, its test split for evaluation) as a ``data`` section."""
    path = Path(path).expanduser()
    if path.is_dir():
        return {"dataset": "unlabelled", "root": str(path), "image_size": image_size}
    if path.is_file() and path.suffix.lower() == ".csv":
        return {"dataset": "csv", "root": str(path), "image_size": image_size}
    if not path.exists():
        raise MissingFileError(f"{what} {path} does not exist; give a folder of images or a CSV list (path,label[,split])")
    raise MissingFileError(f"{what} {path} is neither a folder of images nor a .csv list (path,label[,split])")


def eval_section(path: str | Path, image_size: int) -> dict[str, Any]:
    """Labelled evaluation data: a folder with one sub-folder per class, or a CSV list; its test split."""
    path = Path(path).expanduser()
    if path.is_dir():
        return {"dataset": "folder", "root": str(path), "image_size": image_size}
    return data_section(path, image_size, "--eval-data")


def distill_config(
    source: str,
    target: str,
    dim: int,
    images: str | Path,
    eval_data: str | Path | None = None,
    source_weights: str | None = None,
    source_features: str = "pooled",
    source_image_size: int | None = None,
    target_pretrained: bool = False,
    target_weights: str | None = None,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH,
    image_size: int = DEFAULT_IMAGE_SIZE,
    lr: float = DEFAULT_LR,
    seed: int = 0,
    loss: str = DEFAULT_LOSS,
    overrides: list[str] | None = None,
) -> RunConfig:
    """The distillation recipe: ``target`` (a timm backbone with a ``dim``-d head) taught by the frozen
    ``source`` (a timm model: pretrained weights, or ``source_weights``, a local file) with the transfer
    ``loss`` (a registered one, at its defaults) on label-free batches of ``images``. Evaluated every epoch on ``eval_data``'s test split
    when given (Recall@K), else by agreement@k with the source on a tenth of the images held out."""
    data = data_section(images, image_size, "--images")
    labelled_csv = data["dataset"] == "csv"
    data.update({"classes_per_batch": batch_size, "images_per_class": 1, "views": 2, "transform": "paper"})
    if eval_data is None and not labelled_csv:
        data["holdout_images"] = AGREEMENT_HOLDOUT
    source_section: dict[str, Any] = {"name": source, "features": source_features, "pretrained": source_weights is None}
    if source_weights is not None:
        source_section["weights"] = source_weights
    if source_image_size is not None:
        source_section["image_size"] = source_image_size
    raw: dict[str, Any] = {
        "method": "transfer",
        "name": "distill",
        "seed": seed,
        "data": data,
        "model": {"backbone": target, "embedding_dim": dim, "pretrained": target_pretrained, "weights": target_weights},
        "transfer": {"source": source_section, "loss": {"name": loss}},
        "optim": {"epochs": epochs, "lr": lr},
    }
    if eval_data is not None:
        raw["eval"] = {"data": eval_section(eval_data, image_size)}
        _warn_if_trained_on(images, eval_data)
    from metrictransfer.config import build_config

    return build_config(raw, overrides, origin="metrictransfer distill")


def _warn_if_trained_on(images: str | Path, eval_data: str | Path) -> None:
    """Warn when the evaluation images are (or hold, or lie among) the training images: their recalls then
    measure images the model was trained on, not how it does on new ones."""
    train, held = Path(images).resolve(), Path(eval_data).resolve()
    if train == held or train in held.parents or held in train.parents:
        warnings.warn(
            f"--eval-data {eval_data} and --images {images} share images: its recalls will measure images the "
            "model trains on; give --eval-data a folder of other images to see how it does on new ones",
            stacklevel=3,
        )
