"""A run's test-time preprocessing as data: one :class:`Preprocessing` per run, from which both the
torchvision pipeline that evaluation runs (:func:`metrictransfer.data.transforms.to_torchvision`) and the
description an export writes beside its file (:meth:`Preprocessing.describe`) are built.

No torch here: the numbers are plain data, and reading them costs nothing a search or a configuration
check would not want to pay.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from metrictransfer.errors import ConfigError
from metrictransfer.normalization import BN_INCEPTION_MEAN_BGR, NORMALIZATION_STATS, NORMALIZATIONS
from metrictransfer.registry import TRANSFORMS

#: Resampling filters known by both Pillow (``Image.Resampling``) and torchvision (``InterpolationMode``),
#: by the name a description gives them.
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
# (channel order, value range) pairs a pipeline is built for: the usual RGB in [0, 1], and Caffe's BGR in [0, 255]
_PIXEL_FORMATS = (("RGB", "0-1"), ("BGR", "0-255"))


class _DataSection(Protocol):
    """What :meth:`Preprocessing.for_data` reads of a run's ``data`` section."""

    transform: str
    image_size: int
    normalization: str


@dataclass(frozen=True)
class Preprocessing:
    """The deterministic steps from a decoded image to a model's input, in this order.

    The image, decoded by :mod:`metrictransfer.data.decode` (turned upright by its EXIF Orientation tag:
    ``exif_orientation="applied"``), is converted to ``image_mode``; resized (``resize``: an int, the
    shorter side, the longer in proportion and rounded down; or ``(height, width)``) with the
    ``interpolation`` filter, antialiased; centre-cropped to ``crop`` ``(height, width)`` (or not); its
    pixels taken as ``dtype`` in ``value_range`` (``"0-1"``: divided by 255) and ``channel_order``; and
    normalised per channel to ``(x - mean) / std`` (``mean`` and ``std`` in that channel order).

    Built-in transforms make theirs with :meth:`build`; a run's is :meth:`for_data`."""

    resize: int | tuple[int, int] | None
    crop: tuple[int, int] | None = None
    interpolation: str = "bilinear"
    channel_order: str = "RGB"
    value_range: str = "0-1"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    # Not choices: what metrictransfer's datasets do to every image (decode.py) and what every model takes
    exif_orientation: ClassVar[str] = "applied"
    image_mode: ClassVar[str] = "RGB"
    dtype: ClassVar[str] = "float32"

    def __post_init__(self) -> None:
        for key in ("resize", "crop", "mean", "std"):  # lists (read from JSON, say) as tuples: it stays hashable
            if isinstance(getattr(self, key), list):
                object.__setattr__(self, key, tuple(getattr(self, key)))
        wrong = list(self._problems())
        if wrong:
            raise ConfigError(f"cannot build a Preprocessing: {'; '.join(wrong)}")

    def _problems(self) -> Iterator[str]:
        if not (_is_size(self.resize, shorter_side=True) and _is_size(self.crop)):
            sizes = "(height, width) or None, resize also its shorter side, in pixels above 0"
            yield f"resize {self.resize!r} and crop {self.crop!r} must be {sizes}"
        if self.crop is None and not isinstance(self.resize, tuple):
            yield "it needs a crop or a resize to (height, width): without either, images keep sizes of their own"
        if self.interpolation not in INTERPOLATIONS:
            yield f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
        if (self.channel_order, self.value_range) not in _PIXEL_FORMATS:
            yield f"channel_order {self.channel_order!r} with value_range {self.value_range!r}: only RGB with 0-1 or BGR with 0-255"
        if len(self.mean) != 3 or len(self.std) != 3 or not all(s > 0 for s in self.std):
            yield f"mean {self.mean} and std {self.std} need three values each, std above 0"

    @classmethod
    def build(
        cls,
        normalization: str,
        *,
        resize: int | tuple[int, int] | None,
        crop: tuple[int, int] | None = None,
        interpolation: str = "bilinear",
    ) -> Preprocessing:
        """The steps with the pixel format of a named input convention (``data.normalization``): the
        one place the names become channel order, value range, mean and std."""
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"unknown normalization {normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
        if normalization == "bn_inception":  # Caffe's weights: BGR in 0-255, means subtracted, std 1
            pixels: dict[str, Any] = {"channel_order": "BGR", "value_range": "0-255", "mean": BN_INCEPTION_MEAN_BGR}
        else:
            mean, std = NORMALIZATION_STATS[normalization]
            pixels = {"mean": mean, "std": std}
        return cls(resize=resize, crop=crop, interpolation=interpolation, **pixels)

    @classmethod
    def for_data(cls, data: _DataSection) -> Preprocessing:
        """A run's preprocessing, from its ``data`` section: what the ``data.transform``'s test builder
        gives for ``data.image_size`` and ``data.normalization`` (looking it up imports the transforms, and
        torch). A plug-in transform whose test builder gives a pipeline of its own instead is refused by
        name: it can be evaluated, not described."""
        _, test_builder = TRANSFORMS.get(data.transform, "data.transform")
        built = test_builder(data.image_size, data.normalization)
        if not isinstance(built, Preprocessing):
            raise ConfigError(
                f"data.transform {data.transform!r} gives its test-time steps as a {type(built).__name__}, which cannot "
                "be described for use without metrictransfer; have its test builder return a "
                "metrictransfer.data.preprocessing.Preprocessing (docs/extending/index.md)"
            )
        return built

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the images it gives: the crop's, or the resize's where there is no crop."""
        size = self.crop if self.crop is not None else self.resize
        assert isinstance(size, tuple)  # __post_init__ refuses any other
        return size

    def describe(self) -> dict[str, Any]:
        """The steps as the plain data an export writes (``"preprocessing"`` in ``FILE.json``): what a
        program without metrictransfer follows (docs/guides/using-a-model.md, "The description")."""
        resize: dict[str, Any] | None = None
        if isinstance(self.resize, int):
            resize = {"shorter_side": self.resize, "longer_side_rounding": "floor"}
        elif self.resize is not None:
            resize = {"size": list(self.resize)}
        if resize is not None:
            resize |= {"interpolation": self.interpolation, "antialias": True}
        crop = None if self.crop is None else {"size": list(self.crop), "position": "center", "offset_rounding": "half_to_even"}
        height, width = self.size
        return {
            "exif_orientation": self.exif_orientation,
            "image_mode": self.image_mode,
            "resize": resize,
            "crop": crop,
            "channel_order": self.channel_order,
            "value_range": self.value_range,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            "layout": "NCHW",
            "dtype": self.dtype,
            "height": height,
            "width": width,
        }


def _is_size(size: object, shorter_side: bool = False) -> bool:
    """Whether ``size`` is None, a (height, width) pair or, with ``shorter_side``, one side, in pixels."""
    if size is None:
        return True
    if shorter_side and not isinstance(size, tuple):
        return _is_pixels(size)
    return isinstance(size, tuple) and len(size) == 2 and all(_is_pixels(n) for n in size)


def _is_pixels(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > 0
