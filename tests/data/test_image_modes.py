"""Every Pillow mode becomes the 8-bit RGB image it shows (16-bit scaled, transparency on white), or is refused
by name; decompression bombs are refused by name or skipped. Files are written here and read back through
ImageFolderDataset, as training reads them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from metrictransfer.data.images import ALPHA_BACKGROUND, BadImageError, ImageFolderDataset, open_rgb8, to_rgb8
from metrictransfer.data.index import ImageIndex

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def _row(mode: str, values: list) -> Image.Image:
    image = Image.new(mode, (len(values), 1))
    for x, v in enumerate(values):
        image.putpixel((x, 0), v)
    return image


def _palette(mode: str, indices: list) -> Image.Image:
    image = _row(mode, indices)
    image.putpalette([*RED, *GREEN, *BLUE] + [0] * 759)
    return image


def _lab(colours: list) -> Image.Image:
    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    return ImageCms.applyTransform(_row("RGB", colours), to_lab)


def _dataset(root: Path, names: list[str], skip_bad: bool = False) -> ImageFolderDataset:
    return ImageFolderDataset(ImageIndex(root, names, np.zeros(len(names), dtype=np.int64), ["a"]), skip_bad=skip_bad)


def _pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).reshape(-1, 3).astype(int)


# (file, mode Pillow reads it back as, how to write it, expected RGB pixels, tolerance)
CASES = [
    ("one.png", "1", lambda p: _row("1", [0, 1]).save(p), [BLACK, WHITE], 0),
    ("grey.png", "L", lambda p: _row("L", [0, 77, 255]).save(p), [BLACK, (77,) * 3, WHITE], 0),
    ("palette.png", "P", lambda p: _palette("P", [0, 1, 2]).save(p), [RED, GREEN, BLUE], 0),
    # the hidden colour of the transparent index (red) must not show
    ("palette_transparent.png", "P", lambda p: _palette("P", [0, 1]).save(p, transparency=0), [WHITE, GREEN], 0),
    ("palette_transparent.gif", "P", lambda p: _palette("P", [0, 1]).save(p, transparency=0), [WHITE, GREEN], 0),
    ("rgb.png", "RGB", lambda p: _row("RGB", [RED, (1, 2, 3)]).save(p), [RED, (1, 2, 3)], 0),
    ("rgb_key.png", "RGB", lambda p: _row("RGB", [(1, 2, 3), RED]).save(p, transparency=(1, 2, 3)), [WHITE, RED], 0),
    ("grey_key.png", "L", lambda p: _row("L", [7, 90]).save(p, transparency=7), [WHITE, (90,) * 3], 0),
    (
        "rgba.png",
        "RGBA",
        lambda p: _row("RGBA", [(255, 0, 0, 0), (255, 0, 0, 128), (0, 0, 255, 255)]).save(p),
        [WHITE, (255, 127, 127), BLUE],
        1,
    ),
    ("la.png", "LA", lambda p: _row("LA", [(76, 0), (76, 128), (76, 255)]).save(p), [WHITE, (165,) * 3, (76,) * 3], 1),
    ("pa.tif", "PA", lambda p: _palette("PA", [(0, 0), (1, 255)]).save(p), [WHITE, GREEN], 0),
    ("cmyk.tif", "CMYK", lambda p: _row("CMYK", [(0, 255, 255, 0), (0, 0, 0, 0), (0, 0, 0, 255)]).save(p), [RED, WHITE, BLACK], 0),
    ("ycbcr.tif", "YCbCr", lambda p: _row("RGB", [RED, GREEN, WHITE]).convert("YCbCr").save(p), [RED, GREEN, WHITE], 2),
    # a channel copy instead of a colour conversion would give (138, 209, 198) for red
    ("lab.tif", "LAB", lambda p: _lab([RED, GREEN, WHITE]).save(p), [RED, GREEN, WHITE], 15),
    # 16 bits scaled with rounding, not clipped: 257 is 1/255 of full scale
    (
        "grey16.png",
        "I;16",
        lambda p: Image.fromarray(np.array([[0, 257, 32768, 65535]], np.uint16)).save(p),
        [BLACK, (1,) * 3, (128,) * 3, WHITE],
        0,
    ),
    ("grey16_key.png", "I;16", lambda p: Image.fromarray(np.array([[0, 1000]], np.uint16)).save(p, transparency=1000), [BLACK, WHITE], 0),
    ("grey16b.tif", "I;16B", lambda p: Image.fromarray(np.array([[0, 32768, 65535]], ">u2")).save(p), [BLACK, (128,) * 3, WHITE], 0),
    # 32-bit integers: above 255 means 16-bit, negative clipped
    (
        "int32_16bit.tif",
        "I",
        lambda p: Image.fromarray(np.array([[0, 32768, 65535, -5]], np.int32)).save(p),
        [BLACK, (128,) * 3, WHITE, BLACK],
        0,
    ),
    ("int32_8bit.tif", "I", lambda p: Image.fromarray(np.array([[0, 100, 255]], np.int32)).save(p), [BLACK, (100,) * 3, WHITE], 0),
]


@pytest.mark.parametrize("name, mode, write, expected, tolerance", CASES, ids=[c[0] for c in CASES])
def test_every_mode_reads_as_the_rgb_it_shows(tmp_path, name, mode, write, expected, tolerance):
    write(tmp_path / name)
    with Image.open(tmp_path / name) as image:
        assert image.mode == mode  # the file really exercises this mode
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        image, label = _dataset(tmp_path, [name])[0]
    np.testing.assert_allclose(_pixels(image), np.array(expected), atol=tolerance)


def test_cmyk_jpeg_reads_as_pillows_conversion(tmp_path):
    _row("CMYK", [(0, 255, 255, 0), (200, 10, 30, 40)] * 8).save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as image:
        assert image.mode == "CMYK"
        expected = np.asarray(image.convert("RGB")).reshape(-1, 3)
    np.testing.assert_array_equal(_pixels(_dataset(tmp_path, ["cmyk.jpg"])[0][0]), expected)


@pytest.mark.parametrize(
    "image, expected",
    [
        (_row("La", [(0, 0), (38, 128), (76, 255)]), [WHITE, (165,) * 3, (76,) * 3]),  # premultiplied: 76 * 128 / 255
        (_row("RGBa", [(0, 0, 0, 0), (128, 0, 0, 128)]), [WHITE, (255, 127, 127)]),
        (_row("HSV", [(0, 255, 255), (85, 255, 255)]), [RED, GREEN]),
        (Image.frombytes("I;16L", (3, 1), np.array([0, 32768, 65535], "<u2").tobytes()), [BLACK, (128,) * 3, WHITE]),
        (Image.frombytes("I;16N", (3, 1), np.array([0, 32768, 65535], np.uint16).tobytes()), [BLACK, (128,) * 3, WHITE]),
    ],
    ids=["La", "RGBa", "HSV", "I;16L", "I;16N"],
)
def test_modes_no_file_format_stores_convert_too(image, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        np.testing.assert_allclose(_pixels(to_rgb8(image, "memory")), np.array(expected), atol=1)


def test_16bit_png_from_numpy_is_not_all_white(tmp_path):
    """The original bug: convert("RGB") clipped every value above 255 to white."""
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    with Image.open(tmp_path / "ramp.png") as image:
        assert image.mode in ("I;16", "I")  # "I" on older Pillow, "I;16" on newer
    with pytest.warns(UserWarning, match="16-bit values are scaled to 8 bits"):
        pixels = _pixels(_dataset(tmp_path, ["ramp.png"])[0][0])
    assert pixels.min() == 0 and pixels.max() == 255 and 120 < pixels.mean() < 135


def test_dark_16bit_png_opened_as_int32_is_scaled_by_its_bit_depth():
    """Older Pillow opens 16-bit greyscale PNGs as "I"; values that happen to be <= 255 are still 16-bit."""
    image = Image.fromarray(np.array([[0, 128, 255]], np.int32))
    image.format = "PNG"
    with pytest.warns(UserWarning, match="16-bit"):
        assert _pixels(to_rgb8(image, "dark.png"))[:, 0].tolist() == [0, 0, 1]


@pytest.mark.parametrize(
    "write, mode",
    [
        (lambda p: Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(p), "'F'"),
        (lambda p: Image.fromarray(np.array([[0, 70000]], np.int32)).save(p), "'I' with values up to 70000"),
    ],
    ids=["float", "int32_above_16_bits"],
)
def test_modes_without_an_agreed_range_are_refused_by_name(tmp_path, write, mode):
    write(tmp_path / "odd.tif")
    with pytest.raises(BadImageError, match=rf"cannot read image .*odd\.tif: Pillow mode {mode}.*data\.skip_bad_images"):
        _dataset(tmp_path, ["odd.tif"])[0]
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*odd\.tif: Pillow mode"):
        assert _dataset(tmp_path, ["odd.tif"], skip_bad=True)[0] is None


def test_lossy_conversions_are_warned_once_per_dataset(tmp_path):
    names = []
    for k in range(3):
        Image.fromarray(np.full((4, 4), 1000 * k, np.uint16)).save(tmp_path / f"deep{k}.png")
        _row("RGBA", [(9, 9, 9, 10 * k)]).save(tmp_path / f"clear{k}.png")
        names += [f"deep{k}.png", f"clear{k}.png"]
    _row("RGBA", [(9, 9, 9, 255)]).save(tmp_path / "opaque.png")
    _row("RGB", [RED]).save(tmp_path / "plain.png")
    dataset = _dataset(tmp_path, names + ["opaque.png", "plain.png"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(len(dataset)):
            dataset[i]
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2, messages
    assert "16-bit" in messages[0] and "deep0.png" in messages[0]
    assert f"white {ALPHA_BACKGROUND}" in messages[1] and "clear0.png" in messages[1]
    with warnings.catch_warnings(record=True) as caught:  # an opaque alpha band or plain RGB needs no word
        warnings.simplefilter("always")
        fresh = _dataset(tmp_path, ["opaque.png", "plain.png"])
        fresh[0], fresh[1]
    assert not caught


@pytest.mark.parametrize("limit", [1000, 6000], ids=["error_above_twice_the_limit", "warning_between_1x_and_2x"])
def test_decompression_bombs_are_refused_by_name_or_skipped(tmp_path, monkeypatch, limit):
    Image.new("RGB", (100, 100), RED).save(tmp_path / "bomb.png")
    _row("RGB", [GREEN]).save(tmp_path / "fine.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    filters = list(warnings.filters)
    pattern = rf"cannot read image .*bomb\.png: 10,000 pixels is more than .*limit of {limit:,}.*data\.skip_bad_images"
    with pytest.raises(BadImageError, match=pattern):
        _dataset(tmp_path, ["bomb.png"])[0]
    with pytest.raises(BadImageError, match=pattern):
        open_rgb8(tmp_path / "bomb.png")
    dataset = _dataset(tmp_path, ["bomb.png", "fine.png"], skip_bad=True)
    with pytest.warns(UserWarning, match=r"skipping unreadable image .*bomb\.png: 10,000 pixels"):
        assert dataset[0] is None
    assert _pixels(dataset[1][0]).tolist() == [list(GREEN)]
    assert Image.MAX_IMAGE_PIXELS == limit and warnings.filters == filters  # no global state changed


def test_open_rgb8_names_a_corrupt_file(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(BadImageError, match=r"cannot read image .*bad\.jpg.*data\.skip_bad_images"):
        open_rgb8(tmp_path / "bad.jpg")


# ------------------------------------------------------------------------------------- EXIF orientation

# EXIF Orientation → how a camera stored an upright scene (the inverse of what a viewer applies).
_STORED = {
    1: lambda im: im,
    3: lambda im: im.transpose(Image.Transpose.ROTATE_180),
    6: lambda im: im.transpose(Image.Transpose.ROTATE_90),  # a phone held upright: stored turned left
    8: lambda im: im.transpose(Image.Transpose.ROTATE_270),
    2: lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
}


def _upright_scene() -> Image.Image:
    """A portrait (20 wide, 40 high) whose top half is red and bottom half blue, with a green top-left
    corner: every turn and flip gives a different picture."""
    scene = Image.new("RGB", (20, 40), BLUE)
    scene.paste(RED, (0, 0, 20, 20))
    scene.paste(GREEN, (0, 0, 6, 6))
    return scene


@pytest.mark.parametrize("orientation", sorted(_STORED))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_photo_is_read_the_way_up_its_exif_orientation_says(tmp_path, orientation, fmt):
    """Catches: a phone's portrait (stored sideways, tagged Orientation 6) embedded sideways in training,
    evaluation, indexes, search and grids, which all decode through this dataset and open_rgb8."""
    scene = _upright_scene()
    stored = _STORED[orientation](scene)
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    name = f"photo.{fmt.lower()}"
    stored.save(tmp_path / name, fmt, exif=exif, **({"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}))
    image, _ = _dataset(tmp_path, [name])[0]
    assert image.size == scene.size
    tolerance = 0 if fmt == "PNG" else 40  # JPEG blurs the colour edges a little
    difference = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(scene, dtype=np.int16))
    assert difference.max() <= tolerance, f"orientation {orientation}: read back {image.size}, off by {difference.max()}"
    assert np.array_equal(np.asarray(open_rgb8(tmp_path / name)), np.asarray(image))
