"""Export a trained embedding model for use outside metrictransfer, checked before success is reported.

Formats: ``safetensors`` (weights only; rebuild with :class:`EmbeddingModel` from the JSON), ``torchscript``
(a traced module, loadable with ``torch.jit.load`` without metrictransfer) and ``onnx``. Beside the file goes
``FILE.json`` (``model.onnx.json``): the architecture, the exact test-time preprocessing and the distance to use.
The export is written to a temporary file beside ``FILE``, loaded back and must give the PyTorch model's
embeddings (to 1e-4) on a test batch; only then does it replace ``FILE``. A failure or an interruption
before that leaves any previous ``FILE`` and ``FILE.json`` as they were, and so does a full disk: the free
space is checked before writing (the weights' size plus a margin) and a write that still runs out of
space is one line naming ``FILE``. ``FILE`` (and ``FILE.json``) must be absent or regular files: a FIFO,
a device or a socket there is refused, never replaced. Both are written with the user's umask. The description is written
after ``FILE`` is replaced and records the file's SHA-256 (``"sha256"``), so a description left stale by
a crash between the two writes is recognisable: see :func:`describes`.

The description (``"format_version"`` :data:`DESCRIPTION_VERSION`; files without the field hold the
preprocessing as Python reprs) is enough to use the file without metrictransfer:

- ``"preprocessing"`` (``describe()`` of the run's :class:`~metrictransfer.data.preprocessing.Preprocessing`,
  from which evaluation's test transform is built too):
  ``exif_orientation`` (``"applied"``: the image is first turned the way its EXIF Orientation tag says, as
  ``PIL.ImageOps.exif_transpose`` does), ``image_mode`` (the Pillow mode to convert to), then ``resize`` (``{"size": [H, W]}`` or
  ``{"shorter_side": N}``, the longer side ``floor(N * long / short)``; ``interpolation`` by name), then
  ``crop`` (``{"size": [H, W], "position": "center"}``, offsets ``round((side - size) / 2)`` with halves
  to even, or null), then the pixels as an array scaled to ``value_range`` (``"0-1"``: divided by 255;
  ``"0-255"``: as read), in ``channel_order`` (``"RGB"`` or ``"BGR"``), ``(x - mean) / std`` per channel
  (``mean`` and ``std`` listed in that channel order), laid out as ``layout`` in ``dtype``.
- ``"architecture"``: the timm ``backbone``, ``pooling`` of its feature map (read from what the model's
  ``pool`` computes: ``"avg"``, ``"max"`` or ``"avg+max"``, the sum of both), ``head`` (``{"type":
  "linear", "in_features", "out_features", "bias"}`` or null), ``l2_normalized``, ``output_dim`` and
  ``input_size`` ([C, H, W]); ``embedding_dim`` and ``normalize`` rebuild an :class:`EmbeddingModel`.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import torch
from torch import nn

from metrictransfer import __version__
from metrictransfer.data.preprocessing import Preprocessing
from metrictransfer.errors import ConfigError, MissingPackageError, OutputLocationError
from metrictransfer.io import atomic_write_text, check_replaceable, file_sha256, remove_stale_partials, staged_path
from metrictransfer.models import EmbeddingModel
from metrictransfer.runtime.checkpoint import load_embedding_model, resolve_checkpoint, tensor_bytes

FORMATS = ("safetensors", "torchscript", "onnx")
DESCRIPTION_VERSION = 2  # 1 (no "format_version" field): preprocessing as a list of Python reprs
ONNX_INPUT, ONNX_OUTPUT = "images", "embeddings"


def _need(module: str, package: str, why: str) -> ModuleType:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingPackageError(f"{why} needs the {package} package: pip install {package}") from None


def export_model(
    checkpoint: str | Path, fmt: str, out: str | Path, model_name: str | None = None, tolerance: float = 1e-4
) -> dict[str, Any]:
    """Write the run's embedding model as ``fmt`` to ``out`` and its description beside it; returns the
    description, including the largest difference found when the export was checked."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise OutputLocationError(f"--out {out} is a folder; name the file to write, e.g. {out / ('model.' + fmt)}")
    for target in (out, description_path(out)):  # before any work: a FIFO or a device there is never replaced
        check_replaceable(target)
    model, config = load_embedding_model(checkpoint, name=model_name)
    model.eval()
    for name in (out.name, description_path(out).name):  # what a killed export of this file left
        remove_stale_partials(out.parent, name)
    data = config.data
    size = data.image_size
    steps = Preprocessing.for_data(data)  # the very steps evaluation runs (transforms.to_torchvision), as data
    if steps.size != (size, size):
        raise ConfigError(
            f"the test transform {data.transform!r} gives {steps.size[0]}×{steps.size[1]} "
            f"images but the model is exported for data.image_size {size}×{size}; nothing was written"
        )
    preprocessing = steps.describe()
    architecture = describe_architecture(model, size)
    example = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(example)
    with staged_path(out, size=tensor_bytes(model.state_dict())) as staged:  # replaces out only if the block finishes
        exported = _EXPORTERS[fmt](model, example, staged)
        difference = float((exported - expected).abs().max())
        if not difference <= tolerance:
            raise ConfigError(
                f"the {fmt} export gives embeddings up to {difference:.2e} away from the PyTorch model's "
                f"(allowed {tolerance:.0e}); {out} was not written (a previous one is unchanged); "
                "try another --format"
            )
        names = {"input": {"name": ONNX_INPUT}, "output": {"name": ONNX_OUTPUT}} if fmt == "onnx" else {"input": {}, "output": {}}
        description = {
            "format_version": DESCRIPTION_VERSION,
            "metrictransfer": __version__,
            "format": fmt,
            "file": out.name,
            "sha256": file_sha256(staged),
            "checkpoint": str(resolve_checkpoint(checkpoint)),
            "architecture": architecture,
            "input": {
                **names["input"],
                "layout": preprocessing["layout"],
                "channels": preprocessing["channel_order"],
                "dtype": preprocessing["dtype"],
                "height": size,
                "width": size,
            },
            "preprocessing": preprocessing,
            "output": {**names["output"], "embedding_dim": model.embedding_dim, "l2_normalized": model.normalize},
            "metric": config.eval.metric,
            "checked": {"max_abs_difference": difference, "tolerance": tolerance, "batch": list(example.shape)},
        }
    # After the file: a crash in between leaves the old description, whose sha256 no longer matches.
    atomic_write_text(json.dumps(description, indent=2), description_path(out))
    return description


def describe_architecture(model: EmbeddingModel, image_size: int) -> dict[str, Any]:
    """The model's layers as data: what :meth:`EmbeddingModel.architecture` stores (which rebuilds it), the
    pooling its ``pool`` computes, its head, and the input and output sizes."""
    head = model.head
    if isinstance(head, nn.Linear):
        head_described: dict[str, Any] | None = {
            "type": "linear",
            "in_features": head.in_features,
            "out_features": head.out_features,
            "bias": head.bias is not None,
        }
    elif isinstance(head, nn.Identity):
        head_described = None
    else:
        raise ConfigError(f"cannot describe the embedding head {head!r} for an export (a Linear layer or none)")
    return {
        **model.architecture(),
        "feature_dim": model.feature_dim,
        "pooling": _pooling(model),
        "head": head_described,
        "l2_normalized": bool(model.normalize),
        "output_dim": model.embedding_dim,
        "input_size": [3, image_size, image_size],
    }


_POOLINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "avg": lambda x: x.mean(dim=(2, 3)),
    "max": lambda x: x.amax(dim=(2, 3)),
    "avg+max": lambda x: x.mean(dim=(2, 3)) + x.amax(dim=(2, 3)),
}


def _pooling(model: EmbeddingModel) -> str:
    """Which global pooling ``model.pool`` computes, by trying it on a feature map."""
    feature_map = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pooled = model.pool(feature_map)
    for name, pool in _POOLINGS.items():
        if pooled.shape == (2, 4) and torch.allclose(pooled, pool(feature_map)):
            return name
    raise ConfigError(f"cannot describe the pooling of {type(model).__name__} for an export ({', '.join(_POOLINGS)})")


def describes(out: str | Path) -> bool:
    """Whether ``FILE.json`` describes the ``FILE`` beside it (not a stale description of an earlier export)."""
    try:
        return bool(json.loads(description_path(out).read_text()).get("sha256") == file_sha256(out))
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
        return cast(torch.Tensor, rebuilt.eval()(example))


def _torchscript(model: EmbeddingModel, example: torch.Tensor, out: Path) -> torch.Tensor:
    # torch's FutureWarnings that TorchScript is deprecated speak to torch's developers, not to the
    # user who asked for this format: three lines of noise around the command's own
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)
        traced = torch.jit.trace(model, example)  # type: ignore[no-untyped-call]  # unannotated in torch
        # to memory, then written by Python: TorchScript's own writer aborts the process on a full disk
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        out.write_bytes(buffer.getbuffer())
        warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated")
        loaded = torch.jit.load(str(out))  # type: ignore[no-untyped-call]  # unannotated in torch
    with torch.no_grad():
        return cast(torch.Tensor, loaded(example))


def _onnx(model: EmbeddingModel, example: torch.Tensor, out: Path) -> torch.Tensor:
    _need("onnx", "onnx", "the onnx export")
    runtime = _need("onnxruntime", "onnxruntime", "checking the onnx export")
    with warnings.catch_warnings():  # torch's notices about its exporters, which say nothing about this file
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", "The feature will be removed")
        torch.onnx.export(
            model,
            (example,),
            str(out),
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
            dynamo=False,
        )
    session = runtime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run([ONNX_OUTPUT], {ONNX_INPUT: example.numpy()})[0])


_EXPORTERS = {"safetensors": _safetensors, "torchscript": _torchscript, "onnx": _onnx}
