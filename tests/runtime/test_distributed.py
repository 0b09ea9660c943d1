"""Two processes (torchrun, gloo on the CPU) compute what one process computes on the whole batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from metrictransfer.config import build_config
from metrictransfer.data.multiview import MultiViewDataset, SeededItem, collate_readable
from metrictransfer.data.registry import build_dataset
from metrictransfer.data.sampler import ClassBalancedBatchSampler, RankBatches
from metrictransfer.data.transforms import build_transform
from metrictransfer.engine import trainer
from metrictransfer.evaluation import evaluate
from metrictransfer.evaluation.embed import extract_embeddings
from metrictransfer.models import EmbeddingModel
from metrictransfer.runtime.checkpoint import load_checkpoint, load_embedding_model, save_embedding_model
from tests.runtime.distributed_step import one_step

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

HERE = Path(__file__).parent
MODEL = {"backbone": "resnet10t", "embedding_dim": 16, "freeze_batchnorm": True}


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _source(path: Path) -> Path:
    """A source embedding model's checkpoint, as a source run would leave it."""
    torch.manual_seed(7)
    raw = {"model": {"backbone": "resnet10t", "embedding_dim": 24}}
    return save_embedding_model(EmbeddingModel("resnet10t", 24), build_config(raw), path)


def _step_config(name: str, tmp_path: Path) -> dict:
    raw = {"model": MODEL, "data": {"views": 2, "image_size": 32}, "threads": 1}
    if name == "relaxed_contrastive":
        raw.update(method="transfer", transfer={"source_checkpoint": str(_source(tmp_path / "source.pt"))})
    elif name == "rkd + proxy_anchor":
        raw.update(
            method="transfer", transfer={"source_checkpoint": str(_source(tmp_path / "source.pt")), "loss": "rkd", "metric_weight": 1.0}
        )
    else:  # a cohort: two members, their own views, member 1 accumulating over 2 iterations
        raw.update(method="mutual", mutual={"members": 2, "loss": "rkd"}, model={**MODEL, "normalize": True})
    return raw


STEP_METHODS = ["relaxed_contrastive", "rkd + proxy_anchor", "mutual"]


@pytest.fixture(scope="module")
def two_process_steps(tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    """Each method's configuration and its step's result on two processes: one torchrun launch for all."""
    steps, arguments = {}, []
    for name in STEP_METHODS:
        folder = tmp_path_factory.mktemp("step")
        raw = _step_config(name, folder)
        (folder / "config.json").write_text(json.dumps(raw))
        steps[name] = (raw, folder / "two.pt")
        arguments += [str(folder / "config.json"), str(folder / "two.pt")]
    torchrun(str(HERE / "distributed_step.py"), *arguments)
    return steps


@pytest.mark.parametrize("name", STEP_METHODS)
def test_one_step_on_two_processes_equals_one_process_on_the_global_batch(name, two_process_steps):
    raw, result = two_process_steps[name]
    two = torch.load(result, weights_only=True)
    one = one_step(raw)
    torch.testing.assert_close(two["loss"], one["loss"], rtol=1e-5, atol=1e-6)
    assert two["grads"].keys() == one["grads"].keys()
    scale = max(g.abs().max().item() for g in one["grads"].values())
    for key, grad in one["grads"].items():  # float32 sums in another order: 1e-5 of the largest gradient
        assert (two["grads"][key] - grad).abs().max().item() <= 1e-5 * scale, key


def test_a_two_process_run_ends_with_the_metrics_of_a_one_process_run(tmp_path):
    raw = {
        "data": {"num_classes": 8, "classes_per_batch": 8, "images_per_class": 2, "views": 2, "image_size": 32},
        # batch-independent normalisation (LayerNorm): batch-norm statistics would be per process on the CPU
        "model": {"backbone": "test_convnext", "embedding_dim": 16},
        # SGD: Adam divides by the root of tiny second moments, which magnifies float32 rounding (the two
        # runs sum in another order) into visibly different weights within a few dozen steps
        "optim": {"optimizer": "sgd", "lr": 0.05, "epochs": 2},
        "eval": {"recall_at": [1, 2]},
        "deterministic": True,
    }
    one = trainer.train(build_config(raw), tmp_path / "one", progress=False)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    done = torchrun("-m", "metrictransfer.cli", "train", str(recipe), "--out", str(tmp_path / "two"), "--json")
    assert done.stdout.count('"final"') == 1  # only the first process prints and writes
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    a, b = load_checkpoint(tmp_path / "one")["models"]["model"], load_checkpoint(tmp_path / "two")["models"]["model"]
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=1e-4, atol=1e-5, msg=key)
    for epoch_one, epoch_two in zip(one["history"], two["history"], strict=True):
        assert epoch_two["loss"] == pytest.approx(epoch_one["loss"], rel=1e-6)
    # The sharded evaluation of two processes gives exactly what one process measures on the same weights.
    model, config = load_embedding_model(tmp_path / "two")
    alone = evaluate.evaluate_model(model, evaluate.test_dataset(config), config, torch.device("cpu"))
    assert {k: two["final"][k] for k in alone} == pytest.approx(alone, abs=1e-9)
    # The two runs embed the test split alike. (Their recalls are not compared: after two epochs this tiny
    # model ranks many neighbours at nearly equal distances, and weights that agree to 1e-5 gave recall@1
    # 24 and 32 of 352 on an AMD EPYC, where an Intel CPU gave equal ones.)
    test = evaluate.test_dataset(config)
    alone_one = extract_embeddings(load_embedding_model(tmp_path / "one")[0], test)[0]
    torch.testing.assert_close(extract_embeddings(model, test)[0], alone_one, rtol=1e-3, atol=1e-4)


def test_ranks_take_disjoint_contiguous_slices_that_rebuild_the_global_batch():
    labels = np.repeat(np.arange(10), 6)
    whole = ClassBalancedBatchSampler(labels, 4, 3, seed=5)
    parts = [RankBatches(ClassBalancedBatchSampler(labels, 4, 3, seed=5), 12, rank, 3) for rank in range(3)]
    whole.set_epoch(2)
    for part in parts:
        part.start(2)
    for batch, *slices in zip(whole, *parts):
        assert [item.index for s in slices for item in s] == batch
        assert {item.epoch for s in slices for item in s} == {2}
    with pytest.raises(ValueError, match="cannot be split evenly over 5 processes"):
        RankBatches(whole, 12, 0, 5)


def test_a_resumed_epoch_starts_after_its_finished_batches():
    labels = np.repeat(np.arange(6), 4)
    batches = RankBatches(ClassBalancedBatchSampler(labels, 3, 2, seed=0), 6)
    batches.start(1)
    full = list(batches)
    batches.start(1, done=2)
    assert list(batches) == full[2:] and len(batches) == len(full) - 2


def test_an_images_views_depend_on_seed_epoch_and_index_only():
    config = build_config({"data": {"num_classes": 3}})
    data = MultiViewDataset(build_dataset(config.data, "train"), build_transform("glyphs", True, 32), views=2, seed=3)
    keys = [SeededItem(i, 1) for i in range(6)]
    in_process = [data[k][0] for k in keys]
    torch.manual_seed(99)  # the caller's stream does not matter, and is left as it was
    before = torch.get_rng_state()
    again = [data[k][0] for k in reversed(keys)][::-1]
    assert torch.equal(torch.get_rng_state(), before)
    workers = DataLoader(data, batch_size=2, num_workers=2, collate_fn=collate_readable, sampler=keys)
    from_workers = [views for batch, _, _ in workers for views in batch]
    for a, b, c in zip(in_process, again, from_workers):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(data[SeededItem(0, 1)][0], data[SeededItem(0, 2)][0])  # another epoch, other views
    assert not torch.equal(in_process[0][0], in_process[0][1])  # the two views of an image differ
