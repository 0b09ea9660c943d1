"""Offline demo dataset "glyphs": letters and digits rendered from matplotlib's bundled fonts.

Why this exists: the metric-learning code needs a small, class-disjoint retrieval benchmark that
works without network access or downloads.  matplotlib (a hard dependency) ships DejaVu, STIX and
Computer Modern TrueType fonts, so every installation can render the same characters.

* A class is one character (Latin, Greek and Cyrillic letters in both cases, digits 0-9).
  Characters that look the same in these fonts (Latin ``A`` / Greek ``Α`` / Cyrillic ``А``, ...)
  are merged by keeping one member of each group of :data:`LOOKALIKE_GROUPS`.
* Class ids follow the code points of the kept characters (digits, Latin, Greek, Cyrillic).
* Fonts: DejaVu Sans/Serif/Sans Mono (all styles), STIXGeneral (all styles) and the Computer
  Modern ``cm*10`` text fonts; the TeX symbol fonts ``cmsy10``/``cmex10``, the ``Display`` and
  STIX size/non-Unicode subsets and matplotlib's LastResort fallback font are not used.
* The images of a class are that character in every bundled font whose character map really
  contains it (the glyph is found via the font's cmap and its PostScript name must be the
  character's name, so no ``.notdef`` boxes, no fallback fonts), each rendered ``renders`` times
  with random shift, size and rotation.  Glyphs are drawn at ``SUPERSAMPLE`` x the output
  resolution and box-filtered down, white ink on black, ``uint8`` grayscale.
* Classes are split in two class-disjoint halves by a permutation seeded with the dataset seed:
  ``train`` gets the first ``ceil(C / 2)`` permuted classes, ``test`` the rest.
* Everything is deterministic for a seed (same seed -> byte-identical arrays, given the same
  matplotlib/Pillow/FreeType builds) and the result is cached as an ``.npz`` file.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
import unicodedata
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import matplotlib
import numpy as np
import torch.utils.data
from matplotlib.ft2font import FT2Font
from PIL import Image, ImageDraw, ImageFont

from metrictransfer.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.ft2font import GlyphIndexType

__all__ = [
    "FORMAT_VERSION",
    "LOOKALIKE_GROUPS",
    "GlyphsArrays",
    "GlyphsDataset",
    "build_glyphs",
    "default_cache_dir",
    "detect_lookalike_pairs",
    "font_has_char",
    "glyph_cache_path",
    "glyph_classes",
    "load_glyphs",
]

#: Bump whenever the rendering, the class table or the file layout changes (invalidates caches).
FORMAT_VERSION = 1

#: Glyphs are drawn at this multiple of ``image_size`` and box-filtered down (antialiasing).
SUPERSAMPLE = 4
#: Font size (em height) as a fraction of the canvas side.
FONT_SIZE_FRACTION = 0.7
#: The baseline sits this many em below the canvas centre, so the band from cap height down to
#: the descender line is roughly centred.  Glyphs are placed by the font's baseline (not by their
#: ink box) so that e.g. ``o`` and ``O`` keep their typographic size difference.
BASELINE_BELOW_CENTRE = 0.25
#: Jitter per render: shift in output pixels (uniform in +-MAX_SHIFT_PX on each axis) ...
MAX_SHIFT_PX = 3.5
#: ... size scale factor (uniform) ...
SCALE_RANGE = (0.7, 1.0)
#: ... and rotation in degrees (uniform in +-MAX_ROTATION_DEG).
MAX_ROTATION_DEG = 15.0
#: A glyph whose high-resolution render has fewer ink pixels (value >= 128) than this counts as
#: empty and its font is skipped for that character.
MIN_INK_PIXELS = 10

#: Look-alike rule (see LOOKALIKE_GROUPS): RMS grey-level difference below which two upright
#: renders count as the same drawing, and the share of common fonts in which that must happen.
LOOKALIKE_MAX_RMS = 12.0
LOOKALIKE_MIN_FONT_SHARE = 2.0 / 3.0

SPLITS = ("train", "test")

# --------------------------------------------------------------------------------------------
# Characters
# --------------------------------------------------------------------------------------------


def _char_range(first: int, last: int, skip: tuple[int, ...] = ()) -> tuple[str, ...]:
    return tuple(chr(cp) for cp in range(first, last + 1) if cp not in skip)


#: Candidate characters before look-alike removal, in (Latin, digits, Greek, Cyrillic) order.
CANDIDATE_CHARS: tuple[str, ...] = (
    _char_range(0x41, 0x5A)  # Latin A-Z
    + _char_range(0x61, 0x7A)  # Latin a-z
    + _char_range(0x30, 0x39)  # digits 0-9
    + _char_range(0x391, 0x3A9, skip=(0x3A2,))  # Greek capitals (U+03A2 is unassigned)
    + _char_range(0x3B1, 0x3C9)  # Greek small letters, including final sigma
    + _char_range(0x410, 0x44F)  # basic Cyrillic capitals and small letters
)

#: Groups of characters that are drawn (near) identically in the bundled fonts.  A class that
#: could be any member of a group would be unlearnable noise, so only the FIRST member of each
#: group is kept (Latin before Greek before Cyrillic) and the others are dropped.  The table is
#: explicit so that the class set is deterministic and reviewable; it was derived from the
#: renders with this rule (re-checked by the tests, see :func:`detect_lookalike_pairs`): two
#: characters are look-alikes when their upright, baseline-registered 32 px renders differ by
#: less than 12 grey levels RMS in at least 2/3 of the fonts that contain both.  Pairs that were
#: examined and KEPT apart because they differ in most fonts (share of fonts in which they
#: coincide in brackets): I/l (27 %: l is taller and has a flag serif), K/Cyrillic Ka (25 %),
#: Greek Phi/Cyrillic Ef (38 %), n/Cyrillic pe (56 %: only the italic pe is an n), 3/Cyrillic Ze
#: (44 %), O/0 and 1/l/I (never: the digits are narrower or flagged).  Case pairs such as o/O or
#: c/C are not look-alikes either: renders keep the font's baseline and x-height, so they differ
#: in size and position.
LOOKALIKE_GROUPS: tuple[tuple[str, ...], ...] = (
    # capitals
    ("A", "\u0391", "\u0410"),  # A, Greek Alpha, Cyrillic A
    ("B", "\u0392", "\u0412"),  # B, Greek Beta, Cyrillic Ve
    ("C", "\u0421"),  # C, Cyrillic Es
    ("E", "\u0395", "\u0415"),  # E, Greek Epsilon, Cyrillic Ie
    ("H", "\u0397", "\u041d"),  # H, Greek Eta, Cyrillic En
    ("I", "\u0399"),  # I, Greek Iota
    ("K", "\u039a"),  # K, Greek Kappa
    ("M", "\u039c", "\u041c"),  # M, Greek Mu, Cyrillic Em
    ("N", "\u039d"),  # N, Greek Nu
    ("O", "\u039f", "\u041e"),  # O, Greek Omicron, Cyrillic O
    ("P", "\u03a1", "\u0420"),  # P, Greek Rho, Cyrillic Er
    ("T", "\u03a4", "\u0422"),  # T, Greek Tau, Cyrillic Te
    ("X", "\u03a7", "\u0425"),  # X, Greek Chi, Cyrillic Ha
    ("Y", "\u03a5"),  # Y, Greek Upsilon
    ("Z", "\u0396"),  # Z, Greek Zeta
    ("\u0393", "\u0413"),  # Greek Gamma, Cyrillic Ghe
    ("\u03a0", "\u041f"),  # Greek Pi, Cyrillic Pe
    # small letters
    ("a", "\u0430"),  # a, Cyrillic a
    ("c", "\u0441"),  # c, Cyrillic es
    ("e", "\u0435"),  # e, Cyrillic ie
    ("o", "\u03bf", "\u043e"),  # o, Greek omicron, Cyrillic o
    ("p", "\u0440"),  # p, Cyrillic er
    ("x", "\u0445"),  # x, Cyrillic ha
    ("y", "\u0443"),  # y, Cyrillic u
    ("\u03ba", "\u043a"),  # Greek kappa, Cyrillic ka
)


@lru_cache(maxsize=1)
def _kept_chars() -> tuple[str, ...]:
    candidates = set(CANDIDATE_CHARS)
    removed: set[str] = set()
    seen: set[str] = set()
    for group in LOOKALIKE_GROUPS:
        for ch in group:
            if ch not in candidates:
                raise AssertionError(f"look-alike table names a non-candidate character {ch!r}")
            if ch in seen:
                raise AssertionError(f"character {ch!r} appears in two look-alike groups")
            seen.add(ch)
        removed.update(group[1:])
    return tuple(sorted(candidates - removed, key=ord))


def glyph_classes() -> list[str]:
    """The kept characters in class-id order (sorted by code point)."""
    return list(_kept_chars())


# --------------------------------------------------------------------------------------------
# Fonts
# --------------------------------------------------------------------------------------------

#: Bundled font families that may be used (file-name prefixes in matplotlib's ``fonts/ttf``).
_FONT_FILE_PATTERN = re.compile(r"^(DejaVu(Sans|Serif)|STIXGeneral|cm[a-z]+10)[-A-Za-z]*\.ttf$")
#: TeX math-symbol fonts: their cmap maps letter/digit codes to math symbols (and calligraphic
#: capitals), not to the letters themselves.  The glyph-name check rejects most of them anyway.
_EXCLUDED_FONT_FILES = frozenset({"cmsy10.ttf", "cmex10.ttf"})

_DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _font_dir() -> Path:
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _expected_glyph_names(ch: str) -> frozenset[str]:
    """PostScript glyph names under which a font may legitimately store ``ch``.

    Checking the name (besides the cmap) guards against fonts with TeX encodings whose cmap maps
    the code of a letter to an unrelated symbol.
    """
    cp = ord(ch)
    names = {f"uni{cp:04X}", f"u{cp:04X}"}
    if ch.isascii() and ch.isalpha():
        names.add(ch)
    elif ch.isascii() and ch.isdigit():
        names.add(_DIGIT_NAMES[int(ch)])
        names.add(_DIGIT_NAMES[int(ch)] + "oldstyle")  # Computer Modern math italic digits
    elif 0x370 <= cp <= 0x3FF:
        uname = unicodedata.name(ch)  # e.g. "GREEK CAPITAL LETTER LAMDA"
        base = uname.split("LETTER ", 1)[1].lower().replace("lamda", "lambda")
        if base == "final sigma":
            base = "sigma1"
        names.add(base.capitalize() if "CAPITAL" in uname else base)
    return frozenset(names)


def _candidate_font_paths() -> list[Path]:
    directory = _font_dir()
    return sorted(
        (path for path in directory.iterdir() if _FONT_FILE_PATTERN.match(path.name) and path.name not in _EXCLUDED_FONT_FILES),
        key=lambda path: path.name,
    )


def font_has_char(font_path: str | os.PathLike[str], ch: str) -> bool:
    """Whether the font's cmap maps ``ch`` to a real glyph (not .notdef) named like ``ch``."""
    font = FT2Font(os.fspath(font_path))
    return _font_cmap_has(font, font.get_charmap(), ch)


def _font_cmap_has(font: FT2Font, cmap: Mapping[int, GlyphIndexType], ch: str) -> bool:
    index = cmap.get(ord(ch), 0)
    if index == 0:
        return False
    return font.get_glyph_name(cast("GlyphIndexType", index)) in _expected_glyph_names(ch)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _BaseGlyph:
    """One character in one font, rasterised once at high resolution (cropped to its ink)."""

    image: Image.Image  # mode "L", cropped to the ink box
    anchor_x: float  # point of the crop that goes to the canvas centre (ink centre in x,
    anchor_y: float  # baseline minus BASELINE_BELOW_CENTRE em in y)


def _render_base_glyph(font: ImageFont.FreeTypeFont, ch: str, font_px: int) -> _BaseGlyph | None:
    side = 3 * font_px
    canvas = Image.new("L", (side, side), 0)
    baseline_y = 2 * font_px
    ImageDraw.Draw(canvas).text((font_px, baseline_y), ch, fill=255, font=font, anchor="ls")
    bbox = canvas.getbbox()
    if bbox is None:
        return None
    crop = canvas.crop(bbox)
    if int(np.count_nonzero(np.asarray(crop) >= 128)) < MIN_INK_PIXELS:
        return None
    x0, y0, x1, _ = bbox
    return _BaseGlyph(
        image=crop,
        anchor_x=(x1 - x0) / 2.0,
        anchor_y=baseline_y - BASELINE_BELOW_CENTRE * font_px - y0,
    )


def _render_jittered(glyph: _BaseGlyph, canvas_px: int, shift: tuple[float, float], scale: float, angle_deg: float) -> Image.Image:
    """Rotate/scale the glyph about its anchor and place the anchor at the (shifted) centre."""
    theta = math.radians(angle_deg)
    cos_t, sin_t = math.cos(theta) / scale, math.sin(theta) / scale
    cx = canvas_px / 2.0 + shift[0]
    cy = canvas_px / 2.0 + shift[1]
    # PIL's affine transform maps output (x, y) to input (a x + b y + c, d x + e y + f).
    a, b, d, e = cos_t, sin_t, -sin_t, cos_t
    c = glyph.anchor_x - a * cx - b * cy
    f = glyph.anchor_y - d * cx - e * cy
    return glyph.image.transform((canvas_px, canvas_px), Image.Transform.AFFINE, (a, b, c, d, e, f), Image.Resampling.BILINEAR)


def detect_lookalike_pairs(chars: Sequence[str] | None = None, image_size: int = 32) -> list[tuple[str, str, float]]:
    """Pairs of ``chars`` that the look-alike rule calls identical, with their font share.

    Used to derive and to test :data:`LOOKALIKE_GROUPS`: every candidate is rendered upright,
    unshifted, at the mid scale in each font that has it; a pair is a look-alike when the renders
    differ by less than ``LOOKALIKE_MAX_RMS`` in at least ``LOOKALIKE_MIN_FONT_SHARE`` of the fonts
    containing both.  ``chars`` defaults to all candidates (before removal).
    """
    chars = list(CANDIDATE_CHARS if chars is None else chars)
    position = {ch: i for i, ch in enumerate(chars)}
    canvas_px = image_size * SUPERSAMPLE
    font_px = max(1, round(FONT_SIZE_FRACTION * canvas_px))
    mid_scale = (SCALE_RANGE[0] + SCALE_RANGE[1]) / 2.0
    n = len(chars)
    common = np.zeros((n, n), dtype=np.int64)
    same = np.zeros((n, n), dtype=np.int64)
    for path in _candidate_font_paths():
        ft = FT2Font(os.fspath(path))
        cmap = ft.get_charmap()
        present = [ch for ch in chars if _font_cmap_has(ft, cmap, ch)]
        if not present:
            continue
        pil_font = ImageFont.truetype(os.fspath(path), font_px, layout_engine=ImageFont.Layout.BASIC)
        rows, renders = [], []
        for ch in present:
            glyph = _render_base_glyph(pil_font, ch, font_px)
            if glyph is None:
                continue
            upright = _render_jittered(glyph, canvas_px, (0.0, 0.0), mid_scale, 0.0)
            rows.append(position[ch])
            renders.append(np.asarray(upright.reduce(SUPERSAMPLE), dtype=np.float64).ravel())
        x = np.stack(renders)
        sq = (x * x).sum(axis=1)
        rms = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0) / x.shape[1])
        idx = np.asarray(rows)
        common[np.ix_(idx, idx)] += 1
        same[np.ix_(idx, idx)] += rms < LOOKALIKE_MAX_RMS
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            if common[i, j] and same[i, j] / common[i, j] >= LOOKALIKE_MIN_FONT_SHARE:
                pairs.append((chars[i], chars[j], float(same[i, j] / common[i, j])))
    return pairs


# --------------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GlyphsArrays:
    """All glyph images with labels, font ids and the class-disjoint train/test split."""

    images: np.ndarray  # (N, H, W) uint8 grayscale, white ink on black
    labels: np.ndarray  # (N,) int64 global class ids 0..C-1
    chars: list[str]  # class id -> character
    fonts: list[str]  # font file names used (sorted)
    font_ids: np.ndarray  # (N,) int64 index into fonts
    train_classes: np.ndarray  # sorted global class ids of the train split
    test_classes: np.ndarray  # sorted global class ids of the test split


def _check_params(seed: int, image_size: int, renders: int) -> None:
    for name, value in (("seed", seed), ("image_size", image_size), ("renders", renders)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {value!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if renders < 1:
        raise ValueError(f"renders must be >= 1, got {renders}")


def _split_classes(num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded class permutation; train = first ceil(C/2) permuted classes, test = the rest."""
    perm = np.random.default_rng(seed).permutation(num_classes)
    n_train = (num_classes + 1) // 2
    return (np.sort(perm[:n_train]).astype(np.int64), np.sort(perm[n_train:]).astype(np.int64))


def build_glyphs(seed: int = 0, image_size: int = 32, renders: int = 2) -> GlyphsArrays:
    """Render the full dataset in memory (no cache); deterministic for ``seed``."""
    _check_params(seed, image_size, renders)
    seed, image_size, renders = int(seed), int(image_size), int(renders)
    chars = glyph_classes()
    canvas_px = image_size * SUPERSAMPLE
    font_px = max(1, round(FONT_SIZE_FRACTION * canvas_px))

    # Base renders for every (class, font) pair whose font really contains the character.
    base: list[tuple[int, str, _BaseGlyph]] = []  # (class id, font file name, glyph)
    for path in _candidate_font_paths():
        ft = FT2Font(os.fspath(path))
        cmap = ft.get_charmap()
        pil_font: ImageFont.FreeTypeFont | None = None
        for class_id, ch in enumerate(chars):
            if not _font_cmap_has(ft, cmap, ch):
                continue
            if pil_font is None:
                pil_font = ImageFont.truetype(os.fspath(path), font_px, layout_engine=ImageFont.Layout.BASIC)
            glyph = _render_base_glyph(pil_font, ch, font_px)
            if glyph is not None:
                base.append((class_id, path.name, glyph))
    fonts = sorted({name for _, name, _ in base})
    font_index = {name: i for i, name in enumerate(fonts)}
    base.sort(key=lambda item: (item[0], font_index[item[1]]))

    # Jitter: one row (dx, dy, scale, angle) per image, drawn in image order.
    n_images = len(base) * renders
    rng = np.random.default_rng([seed, 1])
    shifts = rng.uniform(-MAX_SHIFT_PX, MAX_SHIFT_PX, size=(n_images, 2)) * SUPERSAMPLE
    scales = rng.uniform(SCALE_RANGE[0], SCALE_RANGE[1], size=n_images)
    angles = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG, size=n_images)

    images = np.empty((n_images, image_size, image_size), dtype=np.uint8)
    labels = np.empty(n_images, dtype=np.int64)
    font_ids = np.empty(n_images, dtype=np.int64)
    k = 0
    for class_id, font_name, glyph in base:
        for _ in range(renders):
            big = _render_jittered(
                glyph,
                canvas_px,
                (float(shifts[k, 0]), float(shifts[k, 1])),
                float(scales[k]),
                float(angles[k]),
            )
            images[k] = np.asarray(big.reduce(SUPERSAMPLE))
            labels[k] = class_id
            font_ids[k] = font_index[font_name]
            k += 1

    train_classes, test_classes = _split_classes(len(chars), seed)
    return GlyphsArrays(
        images=images,
        labels=labels,
        chars=chars,
        fonts=fonts,
        font_ids=font_ids,
        train_classes=train_classes,
        test_classes=test_classes,
    )


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$METRICTRANSFER_CACHE``, else ``$XDG_CACHE_HOME/metrictransfer``, else ``~/.cache/...``."""
    explicit = os.environ.get("METRICTRANSFER_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "metrictransfer"
    return Path.home() / ".cache" / "metrictransfer"


def glyph_cache_path(
    seed: int = 0,
    image_size: int = 32,
    renders: int = 2,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Cache file for these parameters; the name carries every parameter and the format version."""
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return directory / f"glyphs-v{FORMAT_VERSION}-s{seed}-r{renders}-px{image_size}.npz"


def _to_npz_dict(arrays: GlyphsArrays) -> dict[str, np.ndarray]:
    return {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "matplotlib_version": np.array(matplotlib.__version__),
        "images": arrays.images,
        "labels": arrays.labels,
        "chars": np.array(arrays.chars, dtype=str),
        "fonts": np.array(arrays.fonts, dtype=str),
        "font_ids": arrays.font_ids,
        "train_classes": arrays.train_classes,
        "test_classes": arrays.test_classes,
    }


def _read_cache(path: Path, image_size: int) -> GlyphsArrays | None:
    """Load and sanity-check a cache file; ``None`` if it is missing, stale or corrupt."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            if int(npz["format_version"]) != FORMAT_VERSION:
                return None
            if str(npz["matplotlib_version"]) != matplotlib.__version__:
                return None  # the bundled fonts may have changed
            arrays = GlyphsArrays(
                images=np.ascontiguousarray(npz["images"], dtype=np.uint8),
                labels=np.asarray(npz["labels"], dtype=np.int64),
                chars=[str(c) for c in npz["chars"]],
                fonts=[str(f) for f in npz["fonts"]],
                font_ids=np.asarray(npz["font_ids"], dtype=np.int64),
                train_classes=np.asarray(npz["train_classes"], dtype=np.int64),
                test_classes=np.asarray(npz["test_classes"], dtype=np.int64),
            )
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile):
        return None
    n = arrays.images.shape[0]
    consistent = (
        arrays.images.shape == (n, image_size, image_size)
        and arrays.labels.shape == (n,)
        and arrays.font_ids.shape == (n,)
        and arrays.chars == glyph_classes()
        and (n == 0 or int(arrays.labels.max()) < len(arrays.chars))
        and (n == 0 or int(arrays.font_ids.max()) < len(arrays.fonts))
        and len(arrays.train_classes) + len(arrays.test_classes) == len(arrays.chars)
    )
    return arrays if consistent else None


def _write_cache(path: Path, arrays: GlyphsArrays) -> None:
    """Write atomically: a temp file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            npz: dict[str, Any] = _to_npz_dict(arrays)  # Any: np.savez's stub lets **kwargs reach allow_pickle
            np.savez(handle, **npz)
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; a cache may be shared read-only
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise


def load_glyphs(
    seed: int = 0,
    image_size: int = 32,
    renders: int = 2,
    cache_dir: str | os.PathLike[str] | None = None,
) -> GlyphsArrays:
    """Like :func:`build_glyphs` but cached on disk; a missing or corrupt cache is rebuilt."""
    _check_params(seed, image_size, renders)
    path = glyph_cache_path(int(seed), int(image_size), int(renders), cache_dir)
    cached = _read_cache(path, int(image_size))
    if cached is not None:
        return cached
    arrays = build_glyphs(seed, image_size, renders)
    try:
        _write_cache(path, arrays)
    except OSError as exc:  # read-only home etc.: still usable, just not cached
        warnings.warn(f"could not write glyphs cache {path}: {exc}", RuntimeWarning, stacklevel=2)
    return arrays


# --------------------------------------------------------------------------------------------
# torch Dataset
# --------------------------------------------------------------------------------------------


class GlyphsDataset(torch.utils.data.Dataset[Any]):
    """One split of the glyphs data; items are (PIL.Image in RGB mode, label) with labels
    contiguous 0-based inside the split.

    RGB because the backbones and torchvision transforms used downstream expect 3 channels.
    ``num_classes`` keeps only the first classes of the split (by global class id) for tiny runs.
    ``transform``, if given, is applied to the PIL image.
    """

    item_names: list[str]  # set by build_dataset (:func:`~metrictransfer.data.registry.glyph_item_names`)
    dataset_name: str | None = None  # set by build_dataset
    split: str
    root: Path | None = None  # no files
    is_query: np.ndarray | None = None
    is_gallery: np.ndarray | None = None

    def __init__(
        self,
        split: str = "train",
        seed: int = 0,
        image_size: int = 32,
        renders: int = 2,
        num_classes: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(map(repr, SPLITS))}")
        arrays = load_glyphs(seed=seed, image_size=image_size, renders=renders, cache_dir=cache_dir)
        split_classes = arrays.train_classes if split == "train" else arrays.test_classes
        if num_classes is not None:
            if num_classes < 1 or num_classes > len(split_classes):
                raise ConfigError(f"num_classes={num_classes} but the {split!r} split has {len(split_classes)} classes")
            split_classes = split_classes[:num_classes]
        keep = np.isin(arrays.labels, split_classes)
        to_local = np.full(len(arrays.chars), -1, dtype=np.int64)
        to_local[split_classes] = np.arange(len(split_classes), dtype=np.int64)

        self.split = split
        self.transform = transform
        self.images: np.ndarray = arrays.images[keep]
        self.global_labels: np.ndarray = arrays.labels[keep]
        self.labels: np.ndarray = to_local[self.global_labels]
        self.font_ids: np.ndarray = arrays.font_ids[keep]
        self.fonts: list[str] = list(arrays.fonts)
        self.class_ids: np.ndarray = np.asarray(split_classes, dtype=np.int64)
        self.classes: list[str] = [arrays.chars[c] for c in split_classes]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image: Any = Image.fromarray(self.images[i]).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i])
