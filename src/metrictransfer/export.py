"""Export a trained embedding model for use outside metrictransfer, checked before success is reported.

Formats: ``safetensors`` (weights only; rebuild with :class:`EmbeddingModel` from the JSON), ``torchscript``
(a traced module, loadable with ``torch.jit.load`` without metrictransfer) and ``onnx``. Beside the file goes
``FILE.json`` (``model.onnx.json``): the architecture, the exact test-time preprocessing and the distance to use.
The export is written to a temporary file beside ``FILE``, loaded back and must give the PyTorch model's
embeddings (to 1e-4) on a test batch; only then does it replace ``FILE``. A failure or an interruption
before that leaves any previous ``FILE`` and ``FILE.json`` as they were. The description is written
after ``FILE`` is replaced and records the file's SHA-256 (``"sha256"``), so a description left stale by
a crash between the two writes is recognisable: see :func:`describes`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from metrictransfer import __version__
from metrictransfer.data.transforms import build_transform
from metrictransfer.errors import ConfigError, MissingPackageError, OutputLocationError
from metrictransfer.io import atomic_write_text, file_sha256, remove_stale_partials, staged_path
from metrictransfer.models import EmbeddingModel
from metrictransfer.runtime.checkpoint import load_embedding_model, resolve_checkpoint

FORMATS = ("safetensors", "torchscript", "onnx")


def _need(module: str, package: str, why: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackageError(f"{why} needs the {package} package: pip install {package}") from None


def export_model(checkpoint: str | Path, fmt: str, out: str | Path, model_name: str | None = None,
                 tolerance: float = 1e-4) -> dict:
    """Write the run's embedding model as ``fmt`` to ``out`` and its description beside it; returns the
    description, including the largest difference found when the export was checked."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise OutputLocationError(f"--out {out} is a folder; name the file to write, e.g. {out / ('model.' + fmt)}")
    model, config = load_embedding_model(checkpoint, name=model_name)
    model.eval()
    for name in (out.name, description_path(out).name):  # what a killed export of this file left
        remove_stale_partials(out.parent, name)
    size = config.data.image_size
    example = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(example)
    data = config.data
    with staged_path(out) as staged:  # replaces out only if the block finishes
        exported = _EXPORTERS[fmt](model, example, staged)
        difference = float((exported - expected).abs().max())
        if not difference <= tolerance:
            raise ConfigError(f"the {fmt} export gives embeddings up to {difference:.2e} away from the PyTorch model's "
                              f"(allowed {tolerance:.0e}); {out} was not written (a previous one is unchanged); "
                              "try another --format")
        description = {
            "metrictransfer": __version__,
            "format": fmt,
            "file": out.name,
            "sha256": file_sha256(staged),
            "checkpoint": str(resolve_checkpoint(checkpoint)),
            "architecture": model.architecture(),
            "input": {"layout": "NCHW", "channels": "RGB", "dtype": "float32", "height": size, "width": size},
            "preprocessing": [repr(step) for step in build_transform(data.transform, False, size, data.normalization).transforms],
            "output": {"embedding_dim": model.embedding_dim, "l2_normalized": model.normalize},
            "metric": config.eval.metric,
            "checked": {"max_abs_difference": difference, "tolerance": tolerance, "batch": list(example.shape)},
        }
    # After the file: a crash in between leaves the old description, whose sha256 no longer matches.
    atomic_write_text(json.dumps(description, indent=2), description_path(out))
    return description


def describes(out: str | Path) -> bool:
    """Whether ``FILE.json`` describes the ``FILE`` beside it (not a stale description of an earlier export)."""
    try:
        return json.loads(description_path(out).read_text()).get("sha256") == file_sha256(out)
    except (OSError, ValueError, AttributeError):
        return False


def description_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".json")  # model.onnx → model.onnx.json: one per exported file


def _safetensors(model: EmbeddingModel, example: torch.Tensor, out: Path) -> torch.Tensor:
    from safetensors.torch import load_file, save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    arch = model.architecture()
    rebuilt = EmbeddingModel(arch["backbone"], arch["embedding_dim"], normalize=arch["normalize"])
    rebuilt.load_state_dict(load_file(str(out)))
    with torch.no_grad():
        return rebuilt.eval()(example)


def _torchscript(model: EmbeddingModel, example: torch.Tensor, out: Path) -> torch.Tensor:
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
    traced.save(str(out))
    loaded = torch.jit.load(str(out))
    with torch.no_grad():
        return loaded(example)


def _onnx(model: EmbeddingModel, example: torch.Tensor, out: Path) -> torch.Tensor:
    _need("onnx", "onnx", "the onnx export")
    runtime = _need("onnxruntime", "onnxruntime", "checking the onnx export")
    torch.onnx.export(model, (example,), str(out), input_names=["images"], output_names=["embeddings"],
                      dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}}, dynamo=False)
    session = runtime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["embeddings"], {"images": example.numpy()})[0])


_EXPORTERS = {"safetensors": _safetensors, "torchscript": _torchscript, "onnx": _onnx}
