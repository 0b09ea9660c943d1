"""export: each format is loaded back and gives the PyTorch model's embeddings; a missing package is named;
the description beside the file is enough to use an ONNX export with onnxruntime, numpy and Pillow alone."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from metrictransfer.cli import main
from metrictransfer.config import build_config
from metrictransfer.data.preprocessing import Preprocessing
from metrictransfer.errors import ConfigError
from metrictransfer.model_export import describe_architecture, description_path, export_model
from metrictransfer.models import EmbeddingModel
from metrictransfer.normalization import BN_INCEPTION_MEAN_BGR, NORMALIZATION_STATS
from metrictransfer.retrieval import Gallery, build_index
from metrictransfer.runtime.checkpoint import load_embedding_model, save_embedding_model
from tests.helpers import make_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint.pt")


def _images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript"])
def test_an_export_gives_the_models_embeddings_and_describes_its_preprocessing(checkpoint, tmp_path, fmt, capsys):
    out = tmp_path / f"model.{'pt' if fmt == 'torchscript' else fmt}"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)]) == 0
    assert "checked against the PyTorch model" in capsys.readouterr().out
    described = json.loads(description_path(out).read_text())
    assert described["input"]["height"] == 32 and described["output"]["embedding_dim"] == 8
    assert described["format_version"] == 2 and described["preprocessing"]["mean"] == list(NORMALIZATION_STATS["imagenet"][0])
    assert described["preprocessing"]["exif_orientation"] == "applied"  # phones' portraits: turned as in training
    assert described["architecture"] | {"feature_dim": None} == {
        "backbone": "resnet10t",
        "embedding_dim": 8,
        "normalize": False,
        "feature_dim": None,
        "pooling": "avg+max",
        "head": {"type": "linear", "in_features": 512, "out_features": 8, "bias": True},
        "l2_normalized": False,
        "output_dim": 8,
        "input_size": [3, 32, 32],
    }
    assert described["checked"]["max_abs_difference"] <= 1e-4

    model, _ = load_embedding_model(checkpoint)
    with torch.no_grad():
        expected = model.eval()(_images())
    if fmt == "torchscript":  # usable without metrictransfer: plain torch.jit.load, another batch size
        got = torch.jit.load(str(out))(_images())
    else:
        from safetensors.torch import load_file

        from metrictransfer.models import EmbeddingModel

        arch = described["architecture"]
        rebuilt = EmbeddingModel(arch["backbone"], arch["embedding_dim"], normalize=arch["normalize"]).eval()
        rebuilt.load_state_dict(load_file(str(out)))
        with torch.no_grad():
            got = rebuilt(_images())
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_onnx_without_its_package_names_the_package(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # as if it were not installed
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 2
    assert "pip install onnx" in capsys.readouterr().err
    assert not out.exists()


def test_an_export_that_differs_is_removed_and_fails(checkpoint, tmp_path, monkeypatch):
    from metrictransfer import model_export as export

    real = export._EXPORTERS["safetensors"]
    monkeypatch.setitem(export._EXPORTERS, "safetensors", lambda m, x, out: real(m, x, out) + 1e-3)
    out = tmp_path / "model.safetensors"
    with pytest.raises(ValueError, match="away from the PyTorch model"):
        export_model(checkpoint, "safetensors", out)
    assert not out.exists() and not description_path(out).exists()


def test_onnx_export_runs_in_onnxruntime_with_any_batch_size(checkpoint, tmp_path):
    pytest.importorskip("onnx")
    runtime = pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    export_model(checkpoint, "onnx", out)
    model, _ = load_embedding_model(checkpoint)
    with torch.no_grad():
        expected = model.eval()(_images(5))
    session = runtime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(["embeddings"], {"images": _images(5).numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------- the description

IMAGENET_MEAN, IMAGENET_STD = (list(v) for v in NORMALIZATION_STATS["imagenet"])


@pytest.mark.parametrize(
    "transform, normalization, geometry, pixels",
    [
        (
            "glyphs",
            "imagenet",
            {"resize": {"size": [32, 32], "interpolation": "bilinear", "antialias": True}, "crop": None},
            {"channel_order": "RGB", "value_range": "0-1", "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        ),
        (
            "paper",
            "imagenet",
            {
                "resize": {"shorter_side": 37, "longer_side_rounding": "floor", "interpolation": "bilinear", "antialias": True},
                "crop": {"size": [32, 32], "position": "center", "offset_rounding": "half_to_even"},
            },
            {"channel_order": "RGB", "value_range": "0-1", "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        ),
        (
            "glyphs",
            "bn_inception",
            {"resize": {"size": [32, 32], "interpolation": "bilinear", "antialias": True}, "crop": None},
            {"channel_order": "BGR", "value_range": "0-255", "mean": list(BN_INCEPTION_MEAN_BGR), "std": [1.0, 1.0, 1.0]},
        ),
        (
            "paper",
            "clip",
            {
                "resize": {"shorter_side": 37, "longer_side_rounding": "floor", "interpolation": "bilinear", "antialias": True},
                "crop": {"size": [32, 32], "position": "center", "offset_rounding": "half_to_even"},
            },
            {
                "channel_order": "RGB",
                "value_range": "0-1",
                "mean": list(NORMALIZATION_STATS["clip"][0]),
                "std": list(NORMALIZATION_STATS["clip"][1]),
            },
        ),
    ],
)
def test_the_preprocessing_is_described_as_data_from_the_runs_preprocessing(transform, normalization, geometry, pixels):
    """Catches: preprocessing described otherwise than the run's test transform takes it (which
    tests/data/test_preprocessing.py checks against the description, tensor for tensor)."""
    described = _described(transform, normalization, 32)
    layout = {"layout": "NCHW", "dtype": "float32", "height": 32, "width": 32}
    assert described == {"exif_orientation": "applied", "image_mode": "RGB", **geometry, **pixels, **layout}
    json.dumps(described)  # plain data


def _described(transform: str, normalization: str, size: int) -> dict:
    config = build_config({"data": {"transform": transform, "normalization": normalization, "image_size": size}})
    return Preprocessing.for_data(config.data).describe()


def test_paper_sizes_scale_with_the_image_size():
    described = _described("paper", "bn_inception", 224)
    assert described["resize"]["shorter_side"] == 256 and described["crop"]["size"] == [224, 224]


@pytest.fixture
def transforms():
    """The transform registry, as it was again once the test has registered its own ("mine")."""
    from metrictransfer.registry import TRANSFORMS

    snapshot = TRANSFORMS.snapshot()
    yield TRANSFORMS
    TRANSFORMS.restore(snapshot)


def test_an_export_of_a_transform_without_its_preprocessing_names_it_and_the_fix(tmp_path, transforms, capsys):
    """Catches: a plug-in transform whose test builder gives torchvision steps exported with a description
    guessed from them, or failing with a traceback."""
    paper_train, _ = transforms.get("paper")
    transforms["mine"] = (paper_train, lambda size, normalization: v2.Compose([v2.RGB(), v2.Resize((size, size))]))
    raw = {"model": {"backbone": "resnet10t", "embedding_dim": 8}, "data": {"image_size": 32, "transform": "mine"}}
    checkpoint = save_embedding_model(EmbeddingModel("resnet10t", 8), build_config(raw), tmp_path / "checkpoint.pt")
    out = tmp_path / "model.safetensors"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "safetensors", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "data.transform 'mine' gives its test-time steps as a Compose" in error
    assert "have its test builder return a metrictransfer.data.preprocessing.Preprocessing" in error
    assert not out.exists() and not description_path(out).exists()


class _AvgPooled(EmbeddingModel):
    def pool(self, feature_map):
        return feature_map.mean(dim=(2, 3))


class _SumPooled(EmbeddingModel):
    def pool(self, feature_map):
        return feature_map.sum(dim=(2, 3))


def test_the_pooling_described_is_what_the_model_computes():
    assert describe_architecture(EmbeddingModel("resnet10t", 8, normalize=True), 32)["pooling"] == "avg+max"
    assert describe_architecture(_AvgPooled("resnet10t", 8), 32)["pooling"] == "avg"
    with pytest.raises(ConfigError, match="cannot describe the pooling of _SumPooled"):
        describe_architecture(_SumPooled("resnet10t", 8), 32)
    assert describe_architecture(EmbeddingModel("resnet10t", 8, normalize=True), 48)["l2_normalized"] is True


# ------------------------------------------------------------- the ONNX file without metrictransfer

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "using-a-model.md"
# Runs the guide's script as __main__ with metrictransfer and PyTorch made unimportable, and checks at the end
# that none of them was loaded.
ISOLATED = """
import runpy, sys
BARRED = ("metrictransfer", "torch", "torchvision", "timm")
for name in BARRED:
    sys.modules[name] = None  # an import of any of them now fails
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
loaded = [m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in BARRED]
assert not loaded, loaded
"""


def _guide_script() -> str:
    blocks = re.findall(r"^```python\n(# embed_onnx\.py.*?)^```", GUIDE.read_text(), flags=re.S | re.M)
    assert len(blocks) == 1, "docs/guides/using-a-model.md should hold one python block starting '# embed_onnx.py'"
    return blocks[0]


def _query_images(folder: Path) -> list[Path]:
    """Odd sizes, so the shorter-side resize rounds down and a centre crop's offset is a half."""
    rng = np.random.default_rng(3)
    folder.mkdir()
    paths = []
    for i, (height, width) in enumerate([(45, 61), (70, 37), (40, 40)]):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    gray = folder / "gray.png"
    Image.fromarray(rng.integers(0, 256, (33, 50), dtype=np.uint8), mode="L").save(gray)
    return [*paths, gray]


@pytest.mark.slow
@pytest.mark.parametrize("transform, normalization", [("glyphs", "imagenet"), ("paper", "imagenet"), ("paper", "bn_inception")])
def test_the_guides_script_embeds_like_metrictransfer_from_the_description_alone(tmp_path, transform, normalization):
    """Catches: a description a program without metrictransfer cannot follow to the same embeddings (a missing
    crop, RGB fed to a BGR model, 0-1 values to a 0-255 one, a rounding that moves the crop by a pixel)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    raw = {
        "model": {"backbone": "resnet10t", "embedding_dim": 8, "normalize": True},
        "data": {"image_size": 32, "transform": transform, "normalization": normalization},
    }
    checkpoint = save_embedding_model(EmbeddingModel("resnet10t", 8, normalize=True), build_config(raw), tmp_path / "checkpoint.pt")
    out = tmp_path / "model.onnx"
    export_model(checkpoint, "onnx", out)
    images = _query_images(tmp_path / "images")

    build_index(checkpoint, tmp_path / "images", tmp_path / "index")  # metrictransfer's embeddings of the images
    ours = Gallery(tmp_path / "index")
    row = {Path(n.path).name: ours.row_of(n.id) for n in (ours.item(int(i)) for i in ours.ids)}
    expected = np.asarray(ours.vectors)[[row[p.name] for p in images]]

    script = tmp_path / "embed_onnx.py"
    script.write_text(_guide_script())
    done = subprocess.run(
        [sys.executable, "-I", "-c", ISOLATED, str(script), str(out), *map(str, images)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    got = np.array(json.loads(done.stdout), dtype=np.float32)
    assert got.shape == expected.shape == (4, 8)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
