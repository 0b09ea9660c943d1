"""The run's preprocessing as data: the description an export writes and the torchvision pipeline that
evaluation runs are both built from one Preprocessing, and a program following the description alone (the
search's numpy preprocessing) gives the pipeline's very tensor."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from metrictransfer.data.decode import open_rgb8
from metrictransfer.data.preprocessing import Preprocessing
from metrictransfer.data.transforms import build_transform, to_torchvision
from metrictransfer.errors import ConfigError
from metrictransfer.normalization import NORMALIZATIONS
from metrictransfer.retrieval.onnx_model import preprocess

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GALLERY = Path(__file__).resolve().parents[2] / "examples" / "gallery"
# Written by describe_preprocessing when it read the description back from the torchvision Compose.
EXPECTED = json.loads((FIXTURES / "preprocessing_descriptions.json").read_text())["cases"]
COMBINATIONS = [(t, n) for t in ("paper", "glyphs") for n in NORMALIZATIONS]


def _data(transform: str, normalization: str, size: int) -> SimpleNamespace:
    return SimpleNamespace(transform=transform, normalization=normalization, image_size=size)


def test_every_built_in_combination_has_an_expected_description():
    assert {tuple(key.split()[:2]) for key in EXPECTED} == set(COMBINATIONS)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_the_description_is_byte_for_byte_what_was_read_back_from_the_pipeline(case):
    """Catches: a description that changed when it stopped being read back from the torchvision steps (an
    index or a program of a user's reads it)."""
    transform, normalization, size = case.split()
    assert json.dumps(Preprocessing.for_data(_data(transform, normalization, int(size))).describe()) == EXPECTED[case]


def test_the_evaluation_pipeline_is_built_from_the_same_preprocessing():
    for transform, normalization in COMBINATIONS:
        built = build_transform(transform, False, 32, normalization)
        assert repr(built) == repr(to_torchvision(Preprocessing.for_data(_data(transform, normalization, 32))))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """A glyph of the examples, a non-square photo-like JPEG stored sideways (EXIF Orientation 6), an odd-sized
    PNG whose centre crop's offsets are halves, and a greyscale one."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:61, 0:90]
    smooth = np.stack([rows * 4, cols * 2.5, (rows + cols) * 1.7], axis=-1) % 256
    photo = Image.fromarray(np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turned 90° clockwise to view
    photo.save(folder / "sideways.jpg", quality=90, exif=exif)
    Image.fromarray(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)).save(folder / "odd.png")
    Image.fromarray(rng.integers(0, 256, (33, 50), dtype=np.uint8), mode="L").save(folder / "grey.png")
    return [GALLERY / "C" / "0.png", folder / "sideways.jpg", folder / "odd.png", folder / "grey.png"]


@pytest.mark.parametrize("size", [32, 48])
@pytest.mark.parametrize("transform, normalization", COMBINATIONS)
def test_following_the_description_gives_the_pipelines_tensor(images, transform, normalization, size):
    """Catches: a description that misstates a step the pipeline takes (a crop a pixel off, the channel order,
    the value range), on images as the datasets decode them (EXIF applied, 8-bit RGB)."""
    spec = Preprocessing.for_data(_data(transform, normalization, size))
    pipeline, described = to_torchvision(spec), json.loads(json.dumps(spec.describe()))
    for path in images:
        image = open_rgb8(path)
        expected = pipeline(image).numpy()
        got = preprocess(image, described)
        assert got.shape == expected.shape == (3, size, size), path.name
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4, err_msg=path.name)


def test_a_sideways_photo_is_turned_before_it_is_resized(images):
    assert open_rgb8(images[1]).size == (61, 90)  # stored 90 wide, 61 high; shown as a portrait


@pytest.fixture
def transforms():
    """The transform registry, as it was again once the test has registered its own ("mine")."""
    from metrictransfer.registry import TRANSFORMS

    snapshot = TRANSFORMS.snapshot()
    yield TRANSFORMS
    TRANSFORMS.restore(snapshot)


def test_a_plug_ins_own_pipeline_is_evaluated_but_not_described(transforms):
    """Catches: an export of a transform that gives torchvision steps failing without naming it or the fix."""
    paper_train, _ = transforms.get("paper")
    transforms["mine"] = (paper_train, lambda size, normalization: build_transform("paper", False, size))
    assert build_transform("mine", False, 32) is not None
    with pytest.raises(ConfigError) as raised:
        Preprocessing.for_data(_data("mine", "imagenet", 32))
    message = str(raised.value)
    assert "data.transform 'mine'" in message and "Compose" in message
    assert "return a metrictransfer.data.preprocessing.Preprocessing" in message
    assert "\n" not in message


def test_a_plug_in_that_gives_its_preprocessing_is_evaluated_and_described_by_it(transforms):
    paper_train, _ = transforms.get("paper")
    mine = Preprocessing.build("clip", resize=(40, 40), crop=(32, 32), interpolation="bicubic")
    transforms["mine"] = (paper_train, lambda size, normalization: mine)
    assert Preprocessing.for_data(_data("mine", "imagenet", 32)) is mine
    assert repr(build_transform("mine", False, 32)) == repr(to_torchvision(mine)) and "BICUBIC" in repr(to_torchvision(mine))
    assert mine.describe()["resize"] == {"size": [40, 40], "interpolation": "bicubic", "antialias": True}


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"resize": 40}, "needs a crop or a resize to \\(height, width\\)"),
        ({"resize": (40,), "crop": (32, 32)}, "resize \\(40,\\) and crop \\(32, 32\\) must be"),
        ({"resize": 0, "crop": (32, 32)}, "pixels above 0"),
        ({"resize": (32, 32), "interpolation": "cubic"}, "interpolation 'cubic' is not one of"),
        ({"resize": (32, 32), "channel_order": "BGR"}, "only RGB with 0-1 or BGR with 0-255"),
        ({"resize": (32, 32), "std": (1.0, 0.0, 1.0)}, "std above 0"),
    ],
)
def test_steps_no_pipeline_or_description_can_follow_are_refused_by_name(fields, words):
    with pytest.raises(ConfigError, match=f"cannot build a Preprocessing: .*{words}"):
        Preprocessing(**fields)


def test_an_unknown_normalization_is_named():
    with pytest.raises(ConfigError, match="unknown normalization 'imagenet21k'; valid: imagenet"):
        Preprocessing.build("imagenet21k", resize=(32, 32))


def test_lists_read_from_json_make_the_same_preprocessing():
    spec = Preprocessing.build("imagenet", resize=37, crop=(32, 32))
    assert Preprocessing(**{**vars(spec), "crop": [32, 32], "mean": list(spec.mean)}) == spec


def test_reading_the_preprocessing_loads_no_torch():
    """The search path and configuration checks read it without paying for torch's import."""
    code = (
        "import sys, metrictransfer.data.preprocessing as p; p.Preprocessing.build('imagenet', resize=(8, 8)).describe(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
