"""The models ``embed`` embeds with: a run's own model, or any timm model's features, each with the
preprocessing and the record of what embedded the file (``model_record``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from metrictransfer.config import DataConfig, RunConfig, SourceModelConfig, build_config, load_config
from metrictransfer.errors import ConfigError
from metrictransfer.models.pretrained import PretrainedFeatures
from metrictransfer.runtime.checkpoint import load_embedding_model, model_fingerprint, resolve_checkpoint


class Embedder(NamedTuple):
    """A model, the configuration whose data it embeds, the preprocessing when it is not the data's own
    test transform (``None``), and the record a file of its embeddings keeps."""

    model: Any
    config: RunConfig
    preprocess: DataConfig | None
    record: dict[str, Any]


def checkpoint_embedder(checkpoint: str | Path, model_name: str | None = None) -> Embedder:
    """A run's model (``model_name``: a cohort's member) on the run's data, with its test-time preprocessing."""
    model, config = load_embedding_model(checkpoint, name=model_name)
    record = {
        "kind": "checkpoint",
        "checkpoint": str(resolve_checkpoint(checkpoint)),
        "model": model_name,
        "backbone": config.model.backbone,
        "embedding_dim": int(model.embedding_dim),
        "image_size": config.data.image_size,
        "normalization": config.data.normalization,
        "fingerprint": model_fingerprint(model),  # which weights: an index built from the rows checks it
    }
    return Embedder(model, config, None, record)


#: The command-line flag of each of transfer.source's options, for messages.
TIMM_FLAGS = {"name": "--timm", "pretrained": "--no-pretrained", "weights": "--weights", "features": "--features"}
TIMM_FLAGS |= {"image_size": "--image-size", "normalization": "--normalization"}


def timm_source(given: dict[str, Any]) -> SourceModelConfig:
    """The model options checked and resolved as transfer.source's are (name, input size, normalisation);
    an error names the command line's flag."""
    try:
        return SourceModelConfig.model_validate({key: value for key, value in given.items() if value is not None})
    except ValidationError as err:
        problems = []
        for e in err.errors():
            flag = TIMM_FLAGS.get(str(e["loc"][0]), "--timm") if e["loc"] else "--timm"
            message = e["msg"].removeprefix("Value error, ")
            problems.append(f"{flag}: {message}" + (f" (got {e['input']!r})" if e["type"] != "value_error" else ""))
        raise ConfigError("; ".join(problems)) from None


def timm_embedder(
    source: dict[str, Any],
    recipe: str | Path | None = None,
    dataset: str | None = None,
    root: str | None = None,
    overrides: list[str] | None = None,
) -> Embedder:
    """A timm model's own features (``source``: transfer.source's options) on the data of a recipe or a
    dataset, with that data's test transform at the model's input size and normalisation."""
    sets = [f"data.dataset={json.dumps(dataset)}"] if dataset else []
    sets += [f"data.root={json.dumps(root)}"] if root else []
    sets += list(overrides or [])
    config = load_config(recipe, sets) if recipe else build_config({}, sets, origin="metrictransfer embed")
    spec = timm_source(source)
    model = PretrainedFeatures(spec.name, spec.pretrained, spec.weights, spec.features, spec.image_size, weights_key="--weights")
    preprocess = config.data.model_copy(update={"image_size": model.image_size, "normalization": spec.normalization})
    record = {
        "kind": "timm",
        "name": spec.name,
        "pretrained": spec.pretrained and spec.weights is None,
        "weights": spec.weights,
        "features": spec.features,
        "image_size": model.image_size,
        "normalization": spec.normalization,
        "embedding_dim": model.embedding_dim,
    }
    return Embedder(model, config, preprocess, record)
