"""The library API (metrictransfer.api): each function gives what its command gives, with its checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import metrictransfer as api  # the top level: its functions are metrictransfer.api's, imported on first use
from metrictransfer.cli import main
from metrictransfer.errors import ConfigError, MissingFileError
from tests.helpers import TINY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    results = api.train(TINY, out, report=False, progress=False)
    assert (out / "results.json").is_file() and results["final"]
    return out


def test_train_takes_a_dict_and_refuses_what_the_command_refuses(run, tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        api.train(TINY, run, resume=True)
    with pytest.raises(MissingFileError, match="cannot resume"):
        api.train(None, tmp_path / "nothing", resume=True)
    with pytest.raises(ConfigError, match="give a recipe"):
        api.train(None, tmp_path / "new")


def test_evaluate_embed_index_and_search_give_what_the_commands_print(run, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(run), "--json"]) == 0
    assert api.evaluate(run) == pytest.approx(json.loads(capsys.readouterr().out))
    gallery = tmp_path / "gallery"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (gallery / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(gallery / name / f"{i}.png")
    written = api.embed(tmp_path / "gallery.npz", checkpoint=run, images=gallery)
    assert written.count == 6
    assert api.evaluate(embeddings=[tmp_path / "gallery.npz"], ks=[1]) == pytest.approx(
        api.evaluate(embeddings=[str(tmp_path / "gallery.npz")], ks=[1])
    )
    api.index(run, gallery, tmp_path / "index")
    query = gallery / "a" / "1.png"
    [found] = api.search(tmp_path / "index", [query], k=2, exclude_self=True)
    assert len(found) == 2 and str(query.resolve()) not in [n.path for n in found]
    assert main(["search", str(query), "--index", str(tmp_path / "index"), "--k", "2", "--exclude-self", "--json"]) == 0
    assert [n["path"] for n in json.loads(capsys.readouterr().out)[0]["neighbours"]] == [n.path for n in found]
    with pytest.raises(ConfigError, match="one of the two"):
        api.evaluate(run, embeddings=[tmp_path / "gallery.npz"])
