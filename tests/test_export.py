"""export: each format is loaded back and gives the PyTorch model's embeddings; a missing package is named."""

import json
import sys

import pytest
import torch

from metrictransfer.cli import main
from metrictransfer.export import description_path, export_model
from metrictransfer.runtime.checkpoint import load_embedding_model

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_search import _checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("run") / "checkpoint.pt")


def _images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("fmt", ["safetensors", "torchscript"])
def test_an_export_gives_the_models_embeddings_and_describes_its_preprocessing(checkpoint, tmp_path, fmt, capsys):
    out = tmp_path / f"model.{'pt' if fmt == 'torchscript' else fmt}"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)]) == 0
    assert "checked against the PyTorch model" in capsys.readouterr().out
    described = json.loads(description_path(out).read_text())
    assert described["input"]["height"] == 32 and described["output"]["embedding_dim"] == 8
    assert any("Normalize" in step for step in described["preprocessing"])
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
    from metrictransfer import export

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
