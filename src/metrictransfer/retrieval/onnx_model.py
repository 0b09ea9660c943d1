"""Query images embedded by the ONNX copy of a run's model that an index folder keeps, without PyTorch.

Loading PyTorch and torchvision takes several seconds on a small machine; onnxruntime, Pillow and numpy
take under half a second. So ``metrictransfer index`` exports the model beside the index (``model.onnx``
and its description ``model.onnx.json``, checked against the PyTorch model when written) and ``search``
embeds its queries here, preprocessing each image exactly as the description says.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metrictransfer.data.decode import open_rgb8
from metrictransfer.errors import MissingPackageError, SearchIndexError
from metrictransfer.io import file_sha256

#: How many query images go through the model at once (bounded memory for long query lists).
BATCH = 64


def preprocess(image: Image.Image, steps: dict[str, Any]) -> np.ndarray:
    """An 8-bit RGB image (decoded by :func:`~metrictransfer.data.decode.open_rgb8`, EXIF applied) as the
    model's C × H × W input, following an export description's ``preprocessing``: what torchvision's
    Resize, CenterCrop, ToImage, ToDtype and Normalize do to a Pillow image."""
    resize = steps.get("resize")
    if resize:
        if "size" in resize:
            height, width = resize["size"]
        else:  # the shorter side to shorter_side, the longer in proportion, rounded down (torchvision's rule)
            short, long = sorted(image.size)
            scaled = int(resize["shorter_side"] * long / short)
            width, height = (resize["shorter_side"], scaled) if image.width <= image.height else (scaled, resize["shorter_side"])
        image = image.resize((width, height), Image.Resampling[resize["interpolation"].upper()])
    crop = steps.get("crop")
    if crop:
        height, width = crop["size"]
        top, left = round((image.height - height) / 2), round((image.width - width) / 2)  # halves to even
        image = image.crop((left, top, left + width, top + height))
    pixels = np.asarray(image, dtype=np.float32)
    if steps["value_range"] == "0-1":
        pixels = pixels / np.float32(255)
    if steps["channel_order"] == "BGR":  # BN-Inception's convention (its range is 0-255)
        pixels = pixels[..., ::-1]
    mean, std = (np.asarray(steps[key], dtype=np.float32) for key in ("mean", "std"))
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1), dtype=np.float32)


class OnnxQueryModel:
    """The index's ``model.onnx``, verified against the SHA-256 that ``index.json`` records for it."""

    def __init__(self, index_dir: Path, record: dict[str, Any], rebuild: str) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise MissingPackageError("searching with the index's exported model needs onnxruntime: pip install onnxruntime") from None
        file, described = index_dir / record["file"], index_dir / record["description"]
        for path in (file, described):
            if not path.is_file():
                raise SearchIndexError(f"the index {index_dir} has no {path.name} though index.json lists it; {rebuild}")
        if file_sha256(file) != record["sha256"]:
            raise SearchIndexError(f"{file} is not the model this index was built with (its SHA-256 differs); {rebuild}")
        try:
            self.description = json.loads(described.read_text(encoding="utf-8"))
            self.steps = self.description["preprocessing"]
            names = self.description["input"]["name"], self.description["output"]["name"]
        except (ValueError, KeyError, TypeError) as err:
            raise SearchIndexError(f"{described} is not the description export wrote ({err}); {rebuild}") from None
        if self.description.get("sha256") != record["sha256"]:
            raise SearchIndexError(f"{described} describes another file than {file}; {rebuild}")
        self.input_name, self.output_name = names
        self.session = onnxruntime.InferenceSession(str(file), providers=["CPUExecutionProvider"])

    def embed(self, paths: list[Path], bad_hint: str) -> np.ndarray:
        """One embedding per image file, in order."""
        rows = []
        for start in range(0, len(paths), BATCH):
            batch = np.stack([preprocess(open_rgb8(path, hint=bad_hint), self.steps) for path in paths[start : start + BATCH]])
            rows.append(self.session.run([self.output_name], {self.input_name: batch})[0])
        return np.concatenate(rows).astype(np.float32)
