"""Image files decoded to faithful 8-bit RGB, or refused by name; no PyTorch here, so that commands that
only read images (search with an exported model, data inspect) start without loading it.

Every image is decoded here (training, evaluation, indexes, search, grids), turned the way up its EXIF
Orientation tag says, as a photo viewer shows it: phones store portraits sideways and tag them.

Every mode Pillow opens becomes 8-bit RGB by a stated rule (:func:`to_rgb8`), or is refused by name: a
plain ``convert("RGB")`` clips 16-bit values to white and keeps the colours hidden under transparent
pixels. Oversized files (possible decompression bombs) are refused rather than decoded (:func:`open_rgb8`).
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from metrictransfer.errors import BadImageError

__all__ = ["ALPHA_BACKGROUND", "BadImageError", "open_rgb8", "to_rgb8"]

#: Colour that transparent pixels are composited on: white, because product photos (SOP, In-Shop) are shot on white.
ALPHA_BACKGROUND = (255, 255, 255)

SKIP_HINT = "fix or remove it, or set data.skip_bad_images: true"
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N"}
_PREMULTIPLIED = {"La", "RGBa"}
# Modes whose own Pillow conversion to RGB (or to RGBA, when they carry transparency) is faithful.
_BY_PILLOW = {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "LA", "PA", "RGBA"}
# Notes warned once per dataset: a conversion a user should know about.
_NOTES = {
    "16-bit": "16-bit values are scaled to 8 bits (0..65535 to 0..255, rounded)",
    "alpha": f"transparent pixels are composited on white {ALPHA_BACKGROUND}",
    "negative": "negative values of a 32-bit integer image are clipped to 0",
}
#: The kinds of conversion note, in a fixed order (a dataset keeps one flag for each).
NOTE_KINDS = tuple(_NOTES)


class Noted(Protocol):
    """The conversion notes already told (a ``set[str]``, or one shared by processes): each is told once."""

    def __contains__(self, note: object, /) -> bool: ...

    def add(self, note: str, /) -> None: ...


class _Refusal(ValueError):
    """Why a file cannot become a faithful RGB image; wrapped in a BadImageError that names the file."""


def bad_image(path: str | os.PathLike[str], reason: Any, hint: str = SKIP_HINT) -> BadImageError:
    return BadImageError(f"cannot read image {path}: {reason}; {hint}")


def _declared_16bit(image: Image.Image) -> bool:
    """Whether the file says its samples are 16-bit (PNG greyscale opened as "I", or a 16-bit TIFF)."""
    if image.format == "PNG":
        return True
    bits = getattr(image, "tag_v2", {}).get(258)  # TIFF BitsPerSample
    return (bits[0] if isinstance(bits, tuple) else bits) == 16


def _integer_to_8bit(image: Image.Image, notes: set[str]) -> np.ndarray:
    """Grey levels of an "I;16*" or "I" image as uint8 (see :func:`to_rgb8` for the rule)."""
    raw = np.asarray(image).astype(np.int64)
    if image.mode == "I" and raw.size:
        if raw.max() > 65535:
            raise _Refusal(f"Pillow mode 'I' with values up to {raw.max()} (more than 16 bits) has no agreed range")
        if raw.min() < 0:
            notes.add("negative")
            raw = np.maximum(raw, 0)
        if raw.max() <= 255 and not _declared_16bit(image):
            return raw.astype(np.uint8)  # 8-bit values kept in a 32-bit container
    notes.add("16-bit")
    return ((raw * 255 + 32767) // 65535).astype(np.uint8)


def _over_background(colour: np.ndarray, alpha: np.ndarray, premultiplied: bool, notes: set[str]) -> np.ndarray:
    """uint8 RGB of `colour` (H, W, 3) with `alpha` (H, W) composited on ALPHA_BACKGROUND, rounded."""
    a = alpha.astype(np.int64)[..., None]
    if (a < 255).any():
        notes.add("alpha")
    c, background = colour.astype(np.int64), np.array(ALPHA_BACKGROUND, dtype=np.int64)
    if premultiplied:  # colour is already colour * alpha / 255
        out = c + (background * (255 - a) + 127) // 255
    else:
        out = (c * a + background * (255 - a) + 127) // 255
    return np.clip(out, 0, 255).astype(np.uint8)


def _has_transparency(image: Image.Image) -> bool:
    """An alpha band, a palette with alpha, or a PNG/GIF transparency key (as Pillow 10.1+ has_transparency_data)."""
    palette_alpha = image.mode == "P" and image.palette is not None and image.palette.mode.endswith("A")
    return image.mode in ("LA", "PA", "RGBA") or "transparency" in image.info or palette_alpha


def _to_rgb8(image: Image.Image, notes: set[str]) -> Image.Image:
    mode = image.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        grey = _integer_to_8bit(image, notes)
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        key = image.info.get("transparency")
        if isinstance(key, int):  # PNG tRNS: one grey level marks transparent pixels
            rgb = _over_background(rgb, np.where(np.asarray(image) == key, 0, 255), False, notes)
        return Image.fromarray(rgb)
    if mode in _PREMULTIPLIED:
        pixels = np.asarray(image)
        colour = np.repeat(pixels[..., :1], 3, axis=-1) if mode == "La" else pixels[..., :3]
        return Image.fromarray(_over_background(colour, pixels[..., -1], True, notes))
    if mode not in _BY_PILLOW:
        reason = "(32-bit float) has no agreed value range" if mode == "F" else "has no faithful 8-bit RGB conversion"
        raise _Refusal(f"Pillow mode {mode!r} {reason}; save it as 8- or 16-bit RGB or greyscale")
    if _has_transparency(image):
        rgba = np.asarray(image.convert("RGBA"))
        return Image.fromarray(_over_background(rgba[..., :3], rgba[..., 3], False, notes))
    return image.convert("RGB")


def _warn_new(path: str | os.PathLike[str], notes: set[str], warned: Noted) -> None:
    for note in sorted(notes):
        if note not in warned:
            warned.add(note)
            warnings.warn(f"{_NOTES[note]} (first seen: {path})", stacklevel=3)


def to_rgb8(image: Image.Image, path: str | os.PathLike[str], warned: Noted | None = None) -> Image.Image:
    """A new 8-bit RGB image holding what `image` (opened from `path`) shows; BadImageError names `path` otherwise.

    Rules, so that every file trains as it looks:

    * "1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV": Pillow's own conversion.
    * Transparency ("RGBA", "LA", "PA", a palette with alpha, a PNG/GIF transparency key, premultiplied
      "La"/"RGBa"): composited on ``ALPHA_BACKGROUND``, white, so colours hidden under alpha 0 are not used.
    * "I;16", "I;16B", "I;16L", "I;16N": scaled 0..65535 to 0..255 with rounding (Pillow would clip).
    * "I" (32-bit integer; older Pillow opens 16-bit greyscale PNGs so): negative values clipped to 0;
      treated as 16-bit when the file declares 16 bits (PNG, or a 16-bit TIFF) or any value exceeds 255,
      else as 8-bit; values above 65535 are refused.
    * "F" (32-bit float) and any other mode: refused, since no range can be assumed.

    Conversions a user should know of (16-bit scaling, alpha compositing, clipping) are warned once for
    each kind not yet in `warned`, which is updated; without `warned`, on every call.
    """
    notes: set[str] = set()
    try:
        rgb = _to_rgb8(image, notes)
    except _Refusal as refusal:
        raise bad_image(path, refusal) from None
    _warn_new(path, notes, set() if warned is None else warned)
    return rgb


def _bomb_reason(err: Exception) -> str:
    found = re.search(r"\((\d+) pixels\)", str(err))
    pixels = f"{int(found.group(1)):,} pixels" if found else "its size"
    return (
        f"{pixels} is more than Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} (PIL.Image.MAX_IMAGE_PIXELS), "
        "so it may be a decompression bomb; if you trust it, shrink it or raise that limit"
    )


def open_rgb8_raw(path: str | os.PathLike[str], warned: Noted | None, check_only: bool = False) -> Image.Image:
    """:func:`open_rgb8` raising Pillow's own errors, or _Refusal, for the caller to name the file.

    ``check_only``: a JPEG is decoded at 1/8 of its size (Pillow's draft mode), for checking that a file
    reads (data inspect) and not for its pixels: every byte is still decoded, so a truncated or damaged
    file fails as in full decoding, several times faster."""
    notes: set[str] = set()
    try:
        with warnings.catch_warnings():  # Pillow only warns between 1x and 2x the limit: refuse there too
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if check_only and image.format == "JPEG":
                    image.draft(None, (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()  # some formats check frame sizes only while decoding
                # the way up a camera recorded (EXIF Orientation): a phone's portrait is stored sideways
                ImageOps.exif_transpose(image, in_place=True)
                rgb = _to_rgb8(image, notes)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise _Refusal(_bomb_reason(err)) from err
    _warn_new(path, notes, set() if warned is None else warned)
    return rgb


UNREADABLE = (OSError, UnidentifiedImageError, ValueError)  # ValueError covers _Refusal


def open_rgb8(path: str | os.PathLike[str], warned: Noted | None = None, hint: str = SKIP_HINT) -> Image.Image:
    """The image file at `path` as faithful 8-bit RGB (:func:`to_rgb8`), refusing decompression bombs.

    Pillow's ``Image.MAX_IMAGE_PIXELS`` is the limit (left unchanged); files above it are refused, not
    only those above twice it. Every failure is a BadImageError naming `path`, then `hint`: what to do, in
    the words of the command reading it.
    """
    try:
        return open_rgb8_raw(path, warned)
    except UNREADABLE as err:
        raise bad_image(path, err, hint) from err
