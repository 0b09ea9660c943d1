"""The library's face: one function per command, with the command's checks and results, for Python users.

``import metrictransfer`` then ``metrictransfer.train(...)``, ``metrictransfer.search(...)``: the package
imports this module on first use, so ``import metrictransfer`` and ``metrictransfer --help`` stay light.
The command line parses its arguments, calls these functions and prints what they return.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metrictransfer.config import RunConfig, build_config, load_config
from metrictransfer.errors import ConfigError, MissingFileError, command_option, setting

__all__ = ["distill", "embed", "evaluate", "export", "index", "search", "serve", "train", "tune", "update_index"]


def _config(recipe: str | Path | dict[str, Any] | RunConfig, overrides: Sequence[str]) -> RunConfig:
    """A recipe given as a YAML file, a dict of keys or a configuration, with ``KEY=VALUE`` overrides."""
    if isinstance(recipe, RunConfig):
        return build_config(recipe.model_dump(mode="json"), list(overrides)) if overrides else recipe
    if isinstance(recipe, dict):
        return build_config(recipe, list(overrides))
    return load_config(recipe, list(overrides))


def train(
    recipe: str | Path | dict[str, Any] | RunConfig | None,
    out: str | Path,
    *,
    overrides: Sequence[str] = (),
    resume: bool = False,
    overwrite: bool = False,
    report: bool = True,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train a run of ``recipe`` into ``out`` (``resume``: continue the run in ``out`` with its own recipe;
    give ``recipe=None``) and write its report; returns ``results.json``'s contents. Resuming a run that
    has trained all its epochs returns its results at once, without loading the model or the data."""
    results, _ = train_or_answer(recipe, out, overrides=overrides, resume=resume, overwrite=overwrite, report=report, progress=progress)
    return results


def train_or_answer(
    recipe: str | Path | dict[str, Any] | RunConfig | None,
    out: str | Path,
    *,
    overrides: Sequence[str] = (),
    resume: bool = False,
    overwrite: bool = False,
    report: bool = True,
    progress: bool | None = None,
) -> tuple[dict[str, Any], bool]:
    """:func:`train`, and whether the run had already finished (a resumed run with all its epochs done,
    answered from its ``results.json``): ``metrictransfer train`` says which. Its messages name the
    command's options where it sets them (:func:`~metrictransfer.errors.command_options`: ``resume``, ``overrides``)."""
    from metrictransfer.engine.trainer import train as train_run
    from metrictransfer.report import write_report

    folder = Path(out)
    if resume:
        if recipe is not None:
            changed_with = "--set KEY=VALUE" if command_option("overrides") else "overrides (--set KEY=VALUE)"
            raise ConfigError(
                f"give either a recipe (a new run) or {setting('resume', out, ' ')} (continue that run with its own configuration), "
                f"not both; change how a resumed run runs with {changed_with}"
            )
        if overwrite:
            raise ConfigError("--overwrite starts a new run over an old one; it cannot be combined with --resume")
        if not (folder / "config.yaml").is_file():
            what = "does not exist" if not folder.exists() else "holds no run (no config.yaml)"
            raise MissingFileError(f"cannot resume {folder}: it {what}; give the folder of an interrupted run")
        config = load_config(folder / "config.yaml", list(overrides))
        done = _finished(folder, config)
        if done is not None:
            return done, True
    elif recipe is None:
        raise ConfigError("give a recipe (metrictransfer train RECIPE.yaml) or --resume RUN_DIR")
    else:
        config = _config(recipe, overrides)
    results = train_run(config, folder, resume=resume, overwrite=overwrite, progress=progress, report=write_report if report else None)
    return results, False


def _finished(folder: Path, config: RunConfig) -> dict[str, Any] | None:
    """The results of the run in ``folder`` when it has trained all its epochs, read without loading the
    model or the data (its folder claimed and released at once, by the first process under torchrun:
    refused while in use, a killed writer's temporaries removed); None when it has epochs to train."""
    from metrictransfer.engine.run_folder import claim_run_folder, finished_run

    done = finished_run(folder, config)
    if done is not None and int(os.environ.get("RANK", "0")) == 0:
        claim_run_folder(folder, resume=True).release()
    return done


def distill(
    source: str,
    target: str,
    dim: int,
    images: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    extra_callbacks: list[Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Distil the timm model ``source`` into a ``dim``-d ``target`` on ``images`` (``options``: those of
    :func:`~metrictransfer.distillation.distill_config`; ``extra_callbacks``: training callbacks, as
    :func:`~metrictransfer.engine.trainer.train` takes them); returns ``results.json``'s contents."""
    from metrictransfer.distillation import OPTIONS, distill_config
    from metrictransfer.engine.trainer import train as train_run
    from metrictransfer.errors import command_options
    from metrictransfer.report import write_report

    config = distill_config(source, target, dim, images, **options)
    with command_options(OPTIONS):  # its errors name --source-weights, not the recipe key it sets
        return train_run(config, Path(out), overwrite=overwrite, report=write_report, extra_callbacks=extra_callbacks)


def evaluate(
    checkpoint: str | Path | None = None,
    *,
    embeddings: Sequence[str | Path] = (),
    model: str | None = None,
    query_gallery: bool = False,
    ks: Sequence[int] | None = None,
    metric: str | None = None,
    nmi: bool = False,
    backend: str = "torch",
    device: str | None = None,
) -> dict[str, float]:
    """Recall@K, MAP@R and R-Precision (and NMI) of a run's model on its test split, or of files of
    embeddings (several: their ensemble); fractions, as ``evaluate --json`` prints them."""
    from metrictransfer.evaluation.measure import measure

    return measure(checkpoint, embeddings, query_gallery, model, ks, metric, nmi, backend, device).metrics


def embed(
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    images: str | Path | None = None,
    split: str = "test",
    model: str | None = None,
    batch_size: int | None = None,
    dtype: str = "float32",
    device: str = "auto",
    overwrite: bool = False,
) -> Any:
    """Embed a run's data split, or ``images`` (a folder, a CSV or one image), with the run's model into
    ``out`` (``.npz``, or a table folder); returns what was written (count, dimension, format)."""
    from metrictransfer.evaluation.embed_to_file import check_output, embed_images_to_file, embed_split_to_file
    from metrictransfer.evaluation.embedders import checkpoint_embedder
    from metrictransfer.retrieval.gallery import list_images
    from metrictransfer.runtime.device import resolve_device

    if checkpoint is None:
        raise ConfigError("give the run whose model embeds (checkpoint); the command line embeds with timm models too")
    check_output(out, dtype, overwrite)
    chosen = checkpoint_embedder(checkpoint, model)
    common = {"model": chosen.model, "config": chosen.config, "out": out, "device": resolve_device(device), "preprocess": None}
    common |= {"batch_size": batch_size, "dtype": dtype, "overwrite": overwrite, "model_record": chosen.record}
    if images is not None:
        return embed_images_to_file(images=list_images(images), bad_hint=f"fix it or remove it from {images}", **common)
    return embed_split_to_file(split=split, **common)


def export(checkpoint: str | Path, fmt: str, out: str | Path, model: str | None = None) -> dict[str, Any]:
    """The run's model as ``safetensors``, ``torchscript`` or ``onnx`` at ``out``, checked against PyTorch;
    returns its description (also written beside it, ``out.json``)."""
    from metrictransfer.model_export import export_model

    return export_model(checkpoint, fmt, out, model)


def index(
    checkpoint: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    model: str | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    kind: str = "auto",
    memory: int | None = None,
) -> dict[str, Any]:
    """A searchable index of ``images`` embedded by the run's model; returns ``index.json``'s contents.
    ``kind``: auto, flat, ivf, ivfpq or hnsw; ``memory``: a budget in bytes for the vectors (auto chooses within it)."""
    from metrictransfer.retrieval.build import build_index

    return build_index(checkpoint, images, out, model, device, overwrite=overwrite, kind=kind, memory=memory)


def update_index(index: str | Path, *, add: str | Path | None = None, remove: str | None = None, device: str = "cpu") -> dict[str, Any]:
    """Add the images of ``add`` (a folder or CSV) to a built index and remove the items ``remove`` names
    (ids like ``"3,17"`` or a CSV with an id or path column), atomically; returns the new ``index.json``."""
    from metrictransfer.retrieval.update import update_index as update

    return update(index, add, remove, device)


def search(
    index: str | Path,
    queries: Sequence[str | Path],
    k: int = 10,
    *,
    exclude_self: bool = False,
    checkpoint: str | Path | None = None,
    effort: int | None = None,
    refine: int | None = None,
    where: str | None = None,
) -> list[Any]:
    """The ``k`` nearest gallery images of each query (``Neighbour``: path, distance, label, id, metadata),
    nearest first; ``effort`` (nprobe or efSearch), ``refine`` and ``where`` as ``search`` takes them."""
    from metrictransfer.retrieval.gallery import Gallery

    return Gallery(index, checkpoint).search(list(queries), k, exclude_self=exclude_self, effort=effort, refine=refine, where=where)


def serve(index: str | Path, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None, **options: Any) -> None:
    """Serve searches of ``index`` over HTTP, with its web page, until interrupted (``options``: those of
    :func:`~metrictransfer.retrieval.serve.serve`); binding beyond loopback needs ``token``."""
    from metrictransfer.retrieval.serve import serve as run

    run(index, host=host, port=port, token=token, **options)


def tune(recipe: str | Path, space: str | Path, trials: int, out: str | Path, **options: Any) -> dict[str, Any]:
    """An Optuna study of ``recipe`` over ``space`` (``options``: those of
    :func:`~metrictransfer.tuning.run_study`); returns what ``tune --json`` prints."""
    from metrictransfer.tuning import run_study

    return run_study(recipe, space, trials, out, **options)
